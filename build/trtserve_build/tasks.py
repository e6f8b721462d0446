"""Task registry: what each task's encoder computes and what its ensemble returns.

A task declares, once, the encoder's ONNX outputs (with dynamic axes), the ensemble's
public outputs and the postprocess it needs. Unknown task names are rejected.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from trtserve_backend import contract


class UnknownTaskError(KeyError):
    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0])


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
    ),
    contract.EMBEDDING_TASK: Task(
        name=contract.EMBEDDING_TASK,
        needs_labels=False,
        encoder_output=lambda hidden, labels: TensorDecl(contract.POOLED, "TYPE_FP32", (hidden,)),
        ensemble_outputs=lambda hidden, labels: (TensorDecl(contract.EMBEDDING, "TYPE_FP32", (hidden,)),),
        description="sentence embedding: mean pooling over the attention mask, L2-normalised",
    ),
}


def get_task(name: str) -> Task:
    try:
        return TASKS[name]
    except KeyError:
        raise UnknownTaskError(f"unknown task {name!r}; known tasks: {sorted(TASKS)}") from None
