"""The spec sections of the windowed tasks and of generation, and the seeded task head of a
default checkpoint.

``[question_answering]`` and ``[token_classification]`` hold what the served tokenizer and
postprocess need beyond ``[model]`` (the settings of transformers' pipelines of the same
names); ``[generation]`` the limits of the ``generate`` model; ``[head]`` makes
``model.checkpoint``, when it is missing, from a base encoder with a task head drawn from a
seed: it exercises every stage, but its answers are arbitrary. For ``generation``,
``[training]`` is :class:`DecoderTrainingSpec`: a small GPT-2 trained from scratch.
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


@dataclass(frozen=True)
class GenerateSpec:
    """``[generation]``: the limits of the ``generate`` model. The context (prompt + new tokens)
    is ``model.max_sequence_length``, at most the checkpoint's ``n_positions``."""

    max_prompt_tokens: int = 128
    max_new_tokens: int = 128
    default_max_new_tokens: int = 32
    #: Sequences decoding or waiting at once; beyond it a request is refused (UNAVAILABLE).
    max_sequences: int = 32
    #: Sequences per decode step (one engine call); also the TensorRT profiles' max batch.
    max_decode_batch: int = 8
    eos_token_id: int = 50256


@dataclass(frozen=True)
class DecoderTrainingSpec:
    """``[training]`` of a generation deployment: a GPT-2 of this shape (the real 50,257-token
    vocabulary, ``model.max_sequence_length`` positions) trained from scratch on ``dataset``'s
    training split (seeded ``holdout_fraction`` held out), cached like the sentiment head."""

    dataset: str = "vader-movie-reviews"
    n_layer: int = 4
    n_embd: int = 128
    n_head: int = 4
    steps: int = 250
    batch_size: int = 4
    window: int = 64
    learning_rate: float = 3e-3
    warmup_steps: int = 25
    seed: int = 0
    holdout_fraction: float = 0.05


SECTIONS = {contract.QUESTION_ANSWERING: QASpec, contract.TOKEN_CLASSIFICATION: NERSpec,
            contract.GENERATION_TASK: GenerateSpec}


def parse_task_sections(data: dict[str, Any], where: str, build: Callable) -> tuple[
        QASpec | NERSpec | None, HeadSpec | None, GenerateSpec | None]:
    """(the windowed task's section, ``[head]``, ``[generation]``), the task's section with its
    defaults when absent. A section of another task is an error."""
    task = data["task"]
    for name in SECTIONS:
        if name in data and name != task:
            raise SpecError(f"{where}: [{name}] does not apply to task {task!r}")
    section = build(SECTIONS[task], data.get(task, {}), f"{where} [{task}]") if task in SECTIONS else None
    head = build(HeadSpec, data["head"], f"{where} [head]") if "head" in data else None
    if isinstance(section, GenerateSpec):
        return None, head, section
    return section, head, None


def encoder_max_batch_size(spec) -> int:
    """Rows per encoder request of a :class:`DeploymentSpec`: texts, or windows for the windowed tasks."""
    return spec.windows.max_windows if spec.windows is not None else spec.batching.max_batch_size


def validate_task_sections(spec, where: str) -> None:
    """Checks of a :class:`DeploymentSpec`'s ``[head]`` and windowed-task or generation section."""
    if spec.head is not None and spec.training is not None:
        raise SpecError(f"{where}: [head] and [training] both make model.checkpoint; keep one")
    section, max_sequence_length, max_batch_size = spec.windows, spec.model.max_sequence_length, spec.batching.max_batch_size
    if spec.generation is not None:
        _validate_generation(spec.generation, max_sequence_length, max_batch_size, where)
        _validate_decoder_engines(spec, where)
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


def _validate_generation(g: GenerateSpec, context: int, max_batch_size: int, where: str) -> None:
    for name in ("max_prompt_tokens", "max_new_tokens", "default_max_new_tokens", "max_sequences", "max_decode_batch"):
        if getattr(g, name) < 1:
            raise SpecError(f"{where}: [generation] {name} must be >= 1")
    if g.max_prompt_tokens + g.max_new_tokens > context:
        raise SpecError(f"{where}: [generation] max_prompt_tokens ({g.max_prompt_tokens}) + max_new_tokens "
                        f"({g.max_new_tokens}) exceed model.max_sequence_length ({context}), the context")
    if g.default_max_new_tokens > g.max_new_tokens:
        raise SpecError(f"{where}: [generation] default_max_new_tokens must be <= max_new_tokens")
    if max_batch_size < 8:
        raise SpecError(f"{where}: batching.max_batch_size must be >= 8 for generation (the contract), "
                        f"got {max_batch_size}")


def _validate_decoder_engines(spec, where: str) -> None:
    """Generation: no length buckets; the engines the ``generate`` model runs (ONNX Runtime on the
    FP32 export, or torch from the checkpoint); the other precisions are reported, not served."""
    if spec.model.length_buckets:
        raise SpecError(f"{where}: task '{spec.task}' takes no model.length_buckets (prompts are not padded)")
    for variant, engine in spec.engines.items():
        if engine.backend == "tensorrt":
            raise SpecError(f"{where}: [engine.{variant}] the generate model runs backend \"onnxruntime\" or "
                            "\"torch\"; its TensorRT plan is built by `trtserve-build plan` (not served)")
        served = ("fp32",) if engine.backend == "onnxruntime" else ("fp32", "fp16")
        if engine.precision not in served:
            raise SpecError(f"{where}: [engine.{variant}] the generate model's {engine.backend} engine serves "
                            f"{served}, not {engine.precision!r} (the other precisions are reported by "
                            "`trtserve-build validate`)")


def decoder_profiles(spec, layers: int, heads: int, head_dim: int) -> list[dict[str, tuple]]:
    """The TensorRT profiles of a generation deployment's decoder graph, [context, decode]:
    input name -> (min, opt, max) shapes. context: the prompt step, past length 0; decode: one
    token per sequence, past up to the context."""
    ctx, prompt, batch = spec.model.max_sequence_length, spec.generation.max_prompt_tokens, spec.generation.max_decode_batch
    opt_prompt = max(1, prompt // 2)
    context = {n: ((1, 1), (1, opt_prompt), (batch, prompt)) for n in contract.DECODER_INPUTS}
    decode = {contract.INPUT_IDS: ((1, 1), (batch, 1), (batch, 1)),
              contract.POSITION_IDS: ((1, 1), (batch, 1), (batch, 1)),
              contract.ATTENTION_MASK: ((1, 2), (batch, ctx // 2), (batch, ctx))}
    for i in range(layers):
        for name in (contract.past_key_name(i), contract.past_value_name(i)):
            context[name] = ((1, heads, 0, head_dim), (1, heads, 0, head_dim), (batch, heads, 0, head_dim))
            decode[name] = ((1, heads, 1, head_dim), (batch, heads, ctx // 2 - 1, head_dim),
                            (batch, heads, ctx - 1, head_dim))
    return [context, decode]
