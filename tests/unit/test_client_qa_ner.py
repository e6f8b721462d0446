"""Client side of qa / ner: typed results decoded from the contract's tensors, and the CLI's qa / ner commands."""
from __future__ import annotations

import json

import numpy as np
import pytest

from trtserve_client import Answer, Entity, InferenceError
from trtserve_client.cli import build_parser, read_context
from trtserve_client.errors import BadInputError
from trtserve_client.results import decode_answers, decode_entities

CONTEXT = "Tom Hanks flew to Paris."


def strings(values):
    return np.array([[v.encode()] for v in values], dtype=object)


def test_answers_decode_and_match_their_context():
    answers = decode_answers(strings(["Paris", ""]), np.array([[0.7], [0.9]], np.float32),
                             np.array([[18], [-1]], np.int32), np.array([[23], [-1]], np.int32), [CONTEXT, CONTEXT])
    assert answers == [Answer("Paris", pytest.approx(0.7), 18, 23), Answer("", pytest.approx(0.9), -1, -1)]
    assert answers[0].found and not answers[1].found


@pytest.mark.parametrize("text, start, end", [("Paris", 17, 22), ("", 0, 0), ("Rome", 18, 23)])
def test_an_answer_that_is_not_its_context_span_is_an_inference_error(text, start, end):
    with pytest.raises(InferenceError, match="is not CONTEXT"):
        decode_answers(strings([text]), np.array([[0.5]], np.float32), np.array([[start]]), np.array([[end]]),
                       [CONTEXT])


def test_answers_need_one_row_per_question():
    with pytest.raises(InferenceError, match="ANSWER has shape"):
        decode_answers(strings(["a"]), np.zeros((1, 1)), np.zeros((1, 1)), np.zeros((1, 1)), [CONTEXT, CONTEXT])


def test_entities_decode_both_pipeline_layouts():
    grouped = [{"entity_group": "PER", "score": 0.9, "word": "tom hanks", "start": 0, "end": 9}]
    tokens = [{"entity": "B-LOC", "score": 0.8, "index": 6, "word": "paris", "start": 18, "end": 23}]
    a, b, c = decode_entities(strings([json.dumps(grouped), json.dumps(tokens), "[]"]), 3)
    assert a == [Entity("PER", pytest.approx(0.9), "tom hanks", 0, 9)]
    assert b == [Entity("B-LOC", pytest.approx(0.8), "paris", 18, 23, index=6)] and c == []
    with pytest.raises(InferenceError, match="ENTITIES of item 0"):
        decode_entities(strings(['[{"score": 1}]']), 1)


def test_cli_qa_and_ner_commands_parse(tmp_path):
    context = tmp_path / "context.txt"
    context.write_text(CONTEXT, encoding="utf-8")
    args = build_parser().parse_args(["qa", "--context", str(context), "where did he fly?"])
    assert args.command == "qa" and args.questions == ["where did he fly?"] and read_context(args.context) == CONTEXT
    args = build_parser().parse_args(["--protocol", "http", "ner", "Tom Hanks flew to Paris."])
    assert args.command == "ner" and args.protocol == "http" and args.model == "ner"
    with pytest.raises(BadInputError, match="cannot read --context"):
        read_context(str(tmp_path / "missing.txt"))
    (tmp_path / "bad.txt").write_bytes(b"\xff\xfe")
    with pytest.raises(BadInputError, match="cannot read --context"):
        read_context(str(tmp_path / "bad.txt"))
