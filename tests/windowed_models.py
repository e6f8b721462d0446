"""The QA / NER exactness tests' settings, comparisons and in-process PyTorch engine.

The served topology runs tokenizer -> engine -> postprocess; these tests run the same serve-side
tokenizer and postprocess (trtserve_backend.windows / qa / ner) with PyTorch as the engine, so
the task logic is checked against the Hugging Face pipelines before any server is involved.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import trtserve_contract as contract
from trtserve_backend.qa import QASettings
from trtserve_backend.windows import WindowSettings

class TorchEngine:
    """rows (the tokenizer's encoder inputs) -> per-token logits [k, length, 2 | labels], as the encoder does."""

    def __init__(self, checkpoint: Path, task: str):
        import torch
        from transformers import AutoModelForQuestionAnswering, AutoModelForTokenClassification

        cls = AutoModelForQuestionAnswering if task == contract.QUESTION_ANSWERING else AutoModelForTokenClassification
        self.model = cls.from_pretrained(checkpoint).eval()
        self.task = task
        self.torch = torch

    def __call__(self, rows: dict[str, np.ndarray]) -> np.ndarray:
        feeds = {n: self.torch.from_numpy(rows[n]) for n in contract.ENCODER_INPUTS}
        threads = self.torch.get_num_threads()
        self.torch.set_num_threads(1)  # a busy 2-core machine: 2 threads ran several times slower
        try:
            with self.torch.no_grad():
                out = self.model(**feeds)
        finally:
            self.torch.set_num_threads(threads)
        if self.task == contract.QUESTION_ANSWERING:
            return self.torch.stack([out.start_logits, out.end_logits], dim=-1).numpy()
        return out.logits.numpy()


# ---- the settings the exactness tests cover, in pipeline and serve-side terms ----

@dataclass(frozen=True)
class QACase:
    name: str
    max_seq_len: int = 384
    doc_stride: int = 128
    max_question_len: int = 64
    max_answer_len: int = 15
    top_k: int = 1
    handle_impossible_answer: bool = False
    align_to_words: bool = True

    def pipeline_settings(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "name"}

    def window_settings(self, max_windows: int = 256) -> WindowSettings:
        buckets = tuple(b for b in (64, 128, 256, 384, 512) if b < self.max_seq_len) + (self.max_seq_len,)
        return WindowSettings(max_length=self.max_seq_len, stride=self.doc_stride, buckets=buckets, pad_token_id=0,
                              max_windows=max_windows, max_question_length=self.max_question_len,
                              align_to_words=self.align_to_words)

    def qa_settings(self) -> QASettings:
        return QASettings(n_best=self.top_k, max_answer_length=self.max_answer_len,
                          handle_impossible_answer=self.handle_impossible_answer, align_to_words=self.align_to_words)


@dataclass(frozen=True)
class NERCase:
    aggregation_strategy: str
    max_length: int = 128
    stride: int = 32

    def pipeline_settings(self) -> dict:
        return {"aggregation_strategy": self.aggregation_strategy, "max_length": self.max_length,
                "stride": self.stride}

    def window_settings(self, max_windows: int = 256) -> WindowSettings:
        return WindowSettings(max_length=self.max_length, stride=self.stride, buckets=(32, 64, self.max_length),
                              pad_token_id=0, max_windows=max_windows)


#: The pipeline refuses ``stride`` with aggregation "none": one truncated window, as it does.
NER_CASES = tuple(NERCase(s, stride=0 if s == "none" else 32) for s in ("none", "simple", "first", "average", "max"))


def same_answer(served, reference: dict, score_tol: float = 1e-3) -> str | None:
    """None if a served Answer equals a pipeline answer dict, else what differs."""
    start, end = (reference["start"], reference["end"]) if reference["answer"] else (-1, -1)
    if (served.text, served.start, served.end) != (reference["answer"], start, end):
        return f"served {(served.text, served.start, served.end)} != pipeline {(reference['answer'], start, end)}"
    if abs(served.score - reference["score"]) > score_tol:
        return f"score {served.score} vs {reference['score']}"
    return None


def same_entities(served: list[dict], reference: list[dict], score_tol: float = 1e-3) -> str | None:
    """None if two entity lists agree (every key equal, scores within ``score_tol``), else the first difference."""
    if len(served) != len(reference):
        return f"{len(served)} entities served, {len(reference)} from the pipeline"
    for a, b in zip(served, reference):
        if set(a) != set(b) or any(a[k] != b[k] for k in a if k != "score"):
            return f"served {a} != pipeline {b}"
        if abs(a["score"] - b["score"]) > score_tol:
            return f"score {a['score']} vs {b['score']} in {b}"
    return None


QA_CASES = (
    QACase("defaults"),  # the pipeline's defaults; the qa deployment's settings
    QACase("n_best 3, null answer, short answers", top_k=3, handle_impossible_answer=True, max_answer_len=4),
    QACase("token offsets, 256/64 windows, 24-token questions", max_seq_len=256, doc_stride=64,
           max_question_len=24, align_to_words=False),
)
#: Pairs the non-default QA cases run on (the defaults run on all).
QA_SUBSET = 64
#: Items per request: the rows of all their windows form one engine batch.
REQUEST_ITEMS = 8


def chunks(items, size=REQUEST_ITEMS):
    return [items[i:i + size] for i in range(0, len(items), size)]


def qa_items(case: QACase, pairs):
    """(question, context) per pair; every 37th question made longer than max_question_len on purpose."""
    items = [(p.question, p.context) for p in pairs]
    for i in range(0, len(items), 37):
        q, c = items[i]
        items[i] = (" ".join(pairs[(i + j) % len(pairs)].question for j in range(1, 4)) + " " + q, c)
    return items


def qa_case_items(case: QACase, pairs):
    return qa_items(case, pairs if case.name == "defaults" else pairs[:QA_SUBSET])
