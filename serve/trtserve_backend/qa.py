"""Extractive question answering: span scoring across all windows of a request (``qa_postprocess``).

The scoring is ``transformers``' ``QuestionAnsweringPipeline.postprocess`` (the 4.57 line, the
pipeline's last release; Apache-2.0), ported to work on the rows of :mod:`.windows`: per window,
start/end logits of tokens that cannot be in the answer are set to -10000, both are softmaxed
over the window, the [CLS] start x end product is the window's null score, spans longer than
``max_answer_length`` tokens or ending before they start score 0, and the best
``2 * n_best + 10`` spans (``n_best`` with ``align_to_words`` off) are kept. Across the windows,
spans with the same text (case-insensitive) add their scores; with
``handle_impossible_answer`` the smallest null score joins as the empty answer; the answers are
ordered by score (ties keep window order). The same numpy operations in the same dtype
(float32) as the pipeline, so the result is the pipeline's, not an approximation of it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

import trtserve_contract as contract
from .windows import item_texts, split_windows, utf8_column, window_lengths

#: The pipeline starts its running minimum of the null score here.
NULL_SCORE_START = 1000000


@dataclass(frozen=True)
class QASettings:
    #: Answers kept per question (the pipeline's ``top_k``); the served ``ANSWER`` is the first.
    n_best: int = 1
    max_answer_length: int = 15
    handle_impossible_answer: bool = False
    align_to_words: bool = True

    def __post_init__(self) -> None:
        if self.n_best < 1:
            raise ValueError(f"n_best must be >= 1, got {self.n_best}")
        if self.max_answer_length < 1:
            raise ValueError(f"max_answer_length must be >= 1, got {self.max_answer_length}")


@dataclass(frozen=True)
class Answer:
    """One answer: ``context[start:end] == text``; the empty answer has start = end = -1."""

    text: str
    score: float
    start: int
    end: int


NO_ANSWER = Answer("", 0.0, -1, -1)


def decode_spans(start: np.ndarray, end: np.ndarray, topk: int, max_answer_len: int,
                 undesired_tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The pipeline's ``decode_spans``: the ``topk`` best (start, end) token pairs and their scores."""
    if start.ndim == 1:
        start = start[None]
    if end.ndim == 1:
        end = end[None]
    outer = np.matmul(np.expand_dims(start, -1), np.expand_dims(end, 1))
    candidates = np.tril(np.triu(outer), max_answer_len - 1)
    scores_flat = candidates.flatten()
    if topk == 1:
        idx_sort = [np.argmax(scores_flat)]
    elif len(scores_flat) < topk:
        idx_sort = np.argsort(-scores_flat)
    else:
        idx = np.argpartition(-scores_flat, topk)[0:topk]
        idx_sort = idx[np.argsort(-scores_flat[idx])]
    starts, ends = np.unravel_index(idx_sort, candidates.shape)[1:]
    # as the pipeline: the 2-D mask's nonzero() is (rows, columns), so index 0 always passes
    desired_spans = np.isin(starts, undesired_tokens.nonzero()) & np.isin(ends, undesired_tokens.nonzero())
    starts = starts[desired_spans]
    ends = ends[desired_spans]
    scores = candidates[0, starts, ends]
    return starts, ends, scores


def select_starts_ends(start: np.ndarray, end: np.ndarray, allowed: np.ndarray, min_null_score: float,
                       top_k: int, handle_impossible_answer: bool, max_answer_len: int):
    """The pipeline's ``select_starts_ends`` for one window; ``allowed`` [1, n] is 1 where a token
    may be in the answer (the pipeline's ``(1 - p_mask) & attention_mask``)."""
    undesired_tokens = allowed
    undesired_tokens_mask = undesired_tokens == 0.0
    start = np.where(undesired_tokens_mask, -10000.0, start)
    end = np.where(undesired_tokens_mask, -10000.0, end)
    start = np.exp(start - start.max(axis=-1, keepdims=True))
    start = start / start.sum()
    end = np.exp(end - end.max(axis=-1, keepdims=True))
    end = end / end.sum()
    if handle_impossible_answer:
        min_null_score = min(min_null_score, (start[0, 0] * end[0, 0]).item())
    start[0, 0] = end[0, 0] = 0.0
    starts, ends, scores = decode_spans(start, end, top_k, max_answer_len, undesired_tokens)
    return starts, ends, scores, min_null_score


def answers_for_item(logits: np.ndarray, spans: np.ndarray, lengths: np.ndarray, context: str,
                     settings: QASettings) -> list[Answer]:
    """The ranked answers of one question from its windows.

    ``logits`` [w, length, 2] (start, end) float32, ``spans`` [w, length, 2] char spans (-1 where
    the token cannot be in an answer), ``lengths`` [w] tokens per window (without padding).
    """
    pre_topk = settings.n_best * 2 + 10 if settings.align_to_words else settings.n_best
    min_null_score = NULL_SCORE_START
    answers: list[dict] = []
    by_text: dict[str, dict] = {}  # lower-cased text -> the first answer with it (the pipeline's get_answer)
    for window in range(logits.shape[0]):
        n = int(lengths[window])
        start_logits = logits[window, :n, 0][None].astype(np.float32, copy=False)
        end_logits = logits[window, :n, 1][None].astype(np.float32, copy=False)
        window_spans = spans[window, :n]
        allowed = (window_spans[:, 0] >= 0).astype(np.int64)[None]
        starts, ends, scores, min_null_score = select_starts_ends(
            start_logits, end_logits, allowed, min_null_score, pre_topk,
            settings.handle_impossible_answer, settings.max_answer_length)
        for s, e, score in zip(starts, ends, scores):
            start_index, end_index = int(window_spans[s, 0]), int(window_spans[e, 1])
            target = context[start_index:end_index]
            same = by_text.get(target.lower())
            if same is not None:
                same["score"] += score.item()
            else:
                answers.append({"score": score.item(), "start": start_index, "end": end_index, "answer": target})
                by_text[target.lower()] = answers[-1]
    if settings.handle_impossible_answer:
        answers.append({"score": min_null_score, "start": 0, "end": 0, "answer": ""})
    ranked = sorted(answers, key=lambda a: a["score"], reverse=True)[:settings.n_best]
    return [Answer(a["answer"], a["score"], a["start"], a["end"]) if a["answer"]
            else Answer("", a["score"], -1, -1) for a in ranked]


def ranked_answers(logits: np.ndarray, spans: np.ndarray, window_item: np.ndarray, texts: np.ndarray,
                   settings: QASettings) -> list[list[Answer]]:
    """The ranked answers (at most ``n_best``) of each item of one request (k window rows -> n lists)."""
    lengths = window_lengths(spans)
    return [answers_for_item(logits[rows], spans[rows], lengths[rows], context, settings)
            for rows, context in zip(split_windows(window_item), item_texts(texts, window_item))]


def answer_requests(logits: np.ndarray, spans: np.ndarray, window_item: np.ndarray, texts: np.ndarray,
                    settings: QASettings) -> list[Answer]:
    """The best answer of each item of one request (k window rows -> n answers)."""
    return [ranked[0] if ranked else NO_ANSWER
            for ranked in ranked_answers(logits, spans, window_item, texts, settings)]


class QAPostprocess:
    """One request's window rows -> ``{ANSWER, SCORE, START, END}``, [n, 1] each (``qa_postprocess``)."""

    def __init__(self, settings: QASettings):
        self.settings = settings

    def __call__(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        answers = answer_requests(inputs[contract.LOGITS], inputs[contract.TOKEN_SPANS], inputs[contract.WINDOW_ITEM],
                                  inputs[contract.ITEM_TEXT], self.settings)
        return {
            contract.ANSWER: utf8_column([a.text for a in answers]),
            contract.SCORE: np.array([[a.score] for a in answers], dtype=np.float32).reshape(-1, 1),
            contract.START: np.array([[a.start] for a in answers], dtype=np.int32).reshape(-1, 1),
            contract.END: np.array([[a.end] for a in answers], dtype=np.int32).reshape(-1, 1),
        }
