"""The three steps of a deployment, each built from its typed parameters (:mod:`.parameters`).

One factory per step, used by the ensemble's step models (``triton_models/tokenizer.py``,
``postprocess.py``) and by the one model that runs all three (:mod:`.pipeline`), so that a task
is served alike in either topology:

- :func:`make_tokenizer`: one row per text (:class:`~.tokenize.BucketTokenizer`), or, for the
  windowed tasks (question answering, token classification), one row per window of each item
  plus the tensors the postprocess regroups the windows with (:class:`~.windows.WindowTokenizer`);
- :func:`make_step_postprocess`: the encoder output of a request's rows -> its public outputs.
"""
from __future__ import annotations

import os
from typing import Callable, Sequence

import numpy as np

import trtserve_contract as contract

from .ner import NERPostprocess, NERSettings, TokenVocabulary
from .parameters import PostprocessParameters, TokenizerParameters
from .postprocess import Embedder, LabelledClassifier
from .qa import QAPostprocess, QASettings
from .tokenize import BucketTokenizer
from .windows import WindowSettings, WindowTokenizer

__all__ = ["make_tokenizer", "make_step_postprocess", "windowed"]


def windowed(task: str) -> bool:
    """Whether ``task``'s tokenizer splits items into windows (rows) with side tensors."""
    return task in contract.WINDOWED_TASKS


def make_tokenizer(params: TokenizerParameters, folder: str, output_names: Sequence[str]):
    """The tokenizer step: ``encode_requests(list of each request's items)`` -> per request a dict
    of arrays named as the step's outputs (a windowed tokenizer: or the error of that request)."""
    if not windowed(params.task):
        return BucketTokenizer.from_parameters(params, folder, output_names)
    BucketTokenizer.set_threads(params.tokenizer_threads)
    return WindowTokenizer.from_file(os.path.join(folder, params.tokenizer_file), params.task, WindowSettings(
        max_length=params.max_sequence_length, stride=params.stride, buckets=params.length_buckets,
        pad_token_id=params.pad_token_id, max_windows=params.max_windows,
        max_question_length=params.max_question_length, align_to_words=params.align_to_words))


def make_step_postprocess(params: PostprocessParameters, folder: str = "") -> Callable:
    """The postprocess step of ``params.task``: the one dispatch for the served
    ``<name>_postprocess`` model, the one model (:mod:`.pipeline`) and the build's fidelity report.

    Row tasks: ``f(encoder output [n, ...])``; windowed tasks: ``f({encoder output and side
    tensors of one request's windows})``; both -> {ensemble output name: [n, ...]}.
    ``classification`` needs at least two labels, ``embedding`` takes none; token classification
    reads its tokenizer (``params.tokenizer_file``) from ``folder``. Unknown tasks raise ValueError.
    """
    task, labels = params.task, params.labels
    if task == contract.QUESTION_ANSWERING:
        return QAPostprocess(QASettings(n_best=params.n_best, max_answer_length=params.max_answer_length,
                                        handle_impossible_answer=params.handle_impossible_answer,
                                        align_to_words=params.align_to_words))
    if task == contract.TOKEN_CLASSIFICATION:
        return NERPostprocess(NERSettings(labels, params.aggregation_strategy),
                              TokenVocabulary.from_file(os.path.join(folder, params.tokenizer_file)))
    if task == contract.CLASSIFICATION:
        if len(labels) < 2:
            raise ValueError(f"task {task!r} needs at least two labels, got {list(labels)}")
        return LabelledClassifier(labels)
    if task == contract.EMBEDDING_TASK:
        if labels:
            raise ValueError(f"task {task!r} takes no labels, got {list(labels)}")
        return Embedder()
    known = [contract.CLASSIFICATION, contract.EMBEDDING_TASK, *contract.WINDOWED_TASKS]
    raise ValueError(f"unknown task {task!r}; known: {known}")
