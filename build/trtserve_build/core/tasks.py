"""Task registry: what each task's encoder computes and what its ensemble returns.

A task declares, once, the encoder's ONNX outputs (with dynamic axes), the ensemble's
public outputs, the Hugging Face class its checkpoint loads as (models/loader.py) and the
head the exported graph holds (models/heads.py). Unknown task names are a
:class:`~trtserve_build.core.errors.SpecError` that lists the known ones.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import trtserve_contract as contract

from .errors import UnknownNameError


class UnknownTaskError(UnknownNameError):
    """A task name the registry does not know (a :class:`SpecError`)."""


@dataclass(frozen=True)
class TensorDecl:
    """A tensor without its batch axis. dims use -1 for dynamic; dtype is a Triton TYPE_* name."""

    name: str
    dtype: str
    dims: tuple[int, ...]


@dataclass(frozen=True)
class Task:
    name: str
    needs_labels: bool
    #: Encoder output given (hidden_size, num_labels).
    encoder_output: Callable[[int, int], TensorDecl]
    #: Ensemble outputs given (hidden_size, num_labels).
    ensemble_outputs: Callable[[int, int], tuple[TensorDecl, ...]]
    description: str
    #: The transformers Auto class the checkpoint loads as (models/loader.py).
    hf_auto_class: str
    #: The encoder's output tensor name (what the task head returns).
    encoder_output_name: str


ENCODER_INPUT_DECLS = tuple(TensorDecl(n, "TYPE_INT64", (-1,)) for n in contract.ENCODER_INPUTS)
TEXT_DECL = TensorDecl(contract.TEXT, "TYPE_STRING", (1,))

TASKS: dict[str, Task] = {
    contract.CLASSIFICATION: Task(
        name=contract.CLASSIFICATION,
        needs_labels=True,
        encoder_output=lambda hidden, labels: TensorDecl(contract.LOGITS, "TYPE_FP32", (labels,)),
        ensemble_outputs=lambda hidden, labels: (
            TensorDecl(contract.LABEL, "TYPE_STRING", (1,)),
            TensorDecl(contract.SCORE, "TYPE_FP32", (1,)),
            TensorDecl(contract.PROBABILITIES, "TYPE_FP32", (labels,)),
        ),
        description="sequence classification: softmax over logits, label = argmax",
        hf_auto_class="AutoModelForSequenceClassification",
        encoder_output_name=contract.LOGITS,
    ),
    contract.EMBEDDING_TASK: Task(
        name=contract.EMBEDDING_TASK,
        needs_labels=False,
        encoder_output=lambda hidden, labels: TensorDecl(contract.POOLED, "TYPE_FP32", (hidden,)),
        ensemble_outputs=lambda hidden, labels: (TensorDecl(contract.EMBEDDING, "TYPE_FP32", (hidden,)),),
        description="sentence embedding: mean pooling over the attention mask, L2-normalised",
        hf_auto_class="AutoModel",
        encoder_output_name=contract.POOLED,
    ),
}


def get_task(name: str, where: str | None = None) -> Task:
    """The registered task ``name``; ``where`` (the spec file) prefixes the error message."""
    try:
        return TASKS[name]
    except KeyError:
        prefix = f"{where}: " if where else ""
        raise UnknownTaskError(f"{prefix}unknown task {name!r}; known tasks: {sorted(TASKS)}") from None
