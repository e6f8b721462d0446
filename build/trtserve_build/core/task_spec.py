"""The spec sections of the windowed tasks, and the seeded task head of a default checkpoint.

``[question_answering]`` and ``[token_classification]`` hold what the served tokenizer and
postprocess need beyond ``[model]`` (the settings of transformers' pipelines of the same
names); ``[head]`` makes ``model.checkpoint``, when it is missing, from a base encoder with a
task head drawn from a seed: it exercises every stage, but its answers are arbitrary.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import trtserve_contract as contract

from .errors import SpecError

AGGREGATION_STRATEGIES = ("none", "simple", "first", "average", "max")


@dataclass(frozen=True)
class QASpec:
    """``[question_answering]``; the defaults are the question-answering pipeline's."""

    doc_stride: int = 128
    max_question_length: int = 64
    max_answer_length: int = 15
    #: Answers ranked per question (the pipeline's top_k); ANSWER is the first.
    n_best: int = 1
    handle_impossible_answer: bool = False
    align_to_words: bool = True
    #: Windows (encoder rows) one request may need: the encoder's max batch size.
    max_windows: int = 256


@dataclass(frozen=True)
class NERSpec:
    """``[token_classification]``: windows of ``stride`` tokens overlap (0: one window, truncated)."""

    stride: int = 32
    aggregation_strategy: str = "simple"
    max_windows: int = 256


@dataclass(frozen=True)
class HeadSpec:
    """``[head]``: ``model.checkpoint`` made from ``base_checkpoint`` with a seeded task head."""

    base_checkpoint: str
    seed: int = 14


SECTIONS = {contract.QUESTION_ANSWERING: QASpec, contract.TOKEN_CLASSIFICATION: NERSpec}


def parse_task_sections(data: dict[str, Any], where: str, build: Callable) -> tuple[QASpec | NERSpec | None,
                                                                                      HeadSpec | None]:
    """(the task's section, defaults when absent; ``[head]``). A section of another task is an error."""
    task = data["task"]
    for name in SECTIONS:
        if name in data and name != task:
            raise SpecError(f"{where}: [{name}] does not apply to task {task!r}")
    section = build(SECTIONS[task], data.get(task, {}), f"{where} [{task}]") if task in SECTIONS else None
    head = build(HeadSpec, data["head"], f"{where} [head]") if "head" in data else None
    return section, head


def encoder_max_batch_size(spec) -> int:
    """Rows per encoder request of a :class:`DeploymentSpec`: texts, or windows for the windowed tasks."""
    return spec.windows.max_windows if spec.windows is not None else spec.batching.max_batch_size


def validate_task_sections(spec, where: str) -> None:
    """Checks of a :class:`DeploymentSpec`'s ``[head]`` and windowed-task section."""
    if spec.head is not None and spec.training is not None:
        raise SpecError(f"{where}: [head] and [training] both make model.checkpoint; keep one")
    section, max_sequence_length, max_batch_size = spec.windows, spec.model.max_sequence_length, spec.batching.max_batch_size
    if section is None:
        return
    if section.max_windows < max_batch_size:
        raise SpecError(f"{where}: max_windows ({section.max_windows}) must be >= batching.max_batch_size "
                        f"({max_batch_size}): every item needs at least one window")
    if isinstance(section, QASpec):
        room = max_sequence_length - section.max_question_length - 3
        if not 0 < section.doc_stride < room:
            raise SpecError(f"{where}: [question_answering] doc_stride {section.doc_stride} must lie in (0, {room}): "
                            f"max_sequence_length - max_question_length - 3 special tokens")
        if section.n_best < 1 or section.max_answer_length < 1:
            raise SpecError(f"{where}: [question_answering] n_best and max_answer_length must be >= 1")
        return
    if section.aggregation_strategy not in AGGREGATION_STRATEGIES:
        raise SpecError(f"{where}: [token_classification] aggregation_strategy {section.aggregation_strategy!r}; "
                        f"known: {AGGREGATION_STRATEGIES}")
    if not 0 <= section.stride < max_sequence_length - 2:
        raise SpecError(f"{where}: [token_classification] stride must lie in [0, {max_sequence_length - 2})")
    if section.aggregation_strategy == "none" and section.stride:
        raise SpecError(f"{where}: [token_classification] aggregation_strategy \"none\" takes no stride (the "
                        "pipeline refuses it: tokens of overlapping windows cannot be merged); set stride = 0")


def window_stride(section: QASpec | NERSpec) -> int:
    return section.doc_stride if isinstance(section, QASpec) else section.stride
