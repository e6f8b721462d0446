"""qa / ner with bad or unusual input: a correct answer or a clear error, and the server goes on."""
from __future__ import annotations

import json

import numpy as np
import pytest
import trtserve_contract as contract

from .conftest import text_input
from .test_bad_input import expect_error
from .test_qa_ner import ask, entities

GOOD = ("who directed the film?", "The film was directed by Olivier Assayas and stars Maggie Cheung.")
UNUSUAL = "🎬🍿😍 ¡Qué película! これは素晴らしい映画です。 Очень хороший фильм. مذهل Tom Hanks 🎉"


def still_answers(raw_client):
    [a] = ask(raw_client, [GOOD])
    assert GOOD[1][a.start:a.end] == a.text != ""
    assert entities(raw_client, ["Tom Hanks flew to Paris."])[0] is not None


def qa_inputs(raw_client, questions, contexts):
    return [text_input(raw_client.tc, questions, contract.QUESTION), text_input(raw_client.tc, contexts, contract.CONTEXT)]


@pytest.mark.parametrize("question, context, message", [
    ("", GOOD[1], "QUESTION[0] is empty"),
    (GOOD[0], "", "CONTEXT[0] is empty"),
    (b"\xff\xfe who?", GOOD[1], "QUESTION[0] is not valid UTF-8: byte 0xff at offset 0"),
    (GOOD[0], b"caf\xe9", "CONTEXT[0] is not valid UTF-8: byte 0xe9 at offset 3"),
])
def test_bad_qa_input_is_a_clear_error(raw_client, question, context, message):
    expect_error(raw_client, lambda: raw_client.infer("qa", qa_inputs(raw_client, [question], [context])), message)
    still_answers(raw_client)


def test_a_missing_input_is_named(raw_client):
    only_question = [text_input(raw_client.tc, [GOOD[0]], contract.QUESTION)]
    expect_error(raw_client, lambda: raw_client.infer("qa", only_question), "context", "expected 2 inputs")
    still_answers(raw_client)


def test_bad_ner_input_is_a_clear_error(raw_client):
    expect_error(raw_client, lambda: raw_client.infer("ner", [text_input(raw_client.tc, [b"ok \xff"])]),
                 "TEXT[0] is not valid UTF-8")
    still_answers(raw_client)


def test_a_100k_character_context_is_answered(raw_client, review_corpus):
    context = ""
    for line in review_corpus:
        if len(context) + len(line) + 1 > 100_000:
            break
        context += line + " "
    context = context.ljust(100_000, ".")
    [a] = ask(raw_client, [("what is the film like?", context)])
    assert len(context) == 100_000 and a.text and context[a.start:a.end] == a.text
    [e] = entities(raw_client, [context[:20_000]])  # ~40 windows of 128 tokens
    assert e and all(context[x["start"]:x["end"]] for x in e)
    still_answers(raw_client)


def test_emoji_and_non_latin_scripts_are_answered(raw_client):
    answers = ask(raw_client, [("what film?", UNUSUAL), ("Кто?", "Очень хороший фильм с Томом Хэнксом.")])
    contexts = (UNUSUAL, "Очень хороший фильм с Томом Хэнксом.")
    assert all(c[a.start:a.end] == a.text for c, a in zip(contexts, answers))
    texts = [UNUSUAL, "", "   "]
    found = entities(raw_client, texts)
    assert found[1] == [] and found[2] == []
    for e in found[0]:
        assert UNUSUAL[e["start"]:e["end"]].strip() and isinstance(e["score"], float)
    still_answers(raw_client)


def test_the_request_size_limit_counts_question_and_context_together(raw_client, qa_spec):
    """Issue 15's input limit (1 MiB of text per request) holds for QUESTION + CONTEXT: checked
    before decoding or tokenizing, named in the error; the server answers the next request."""
    limit = qa_spec.batching.max_request_text_bytes
    question, context = "what is it?", "a" * (limit - len("what is it?") + 1)  # one byte over, together
    message = expect_error(raw_client, lambda: raw_client.infer("qa", qa_inputs(raw_client, [question], [context])),
                           f"over the limit of {limit} bytes")
    assert "question + context" in message and f"{limit + 1} bytes" in message, message
    still_answers(raw_client)
