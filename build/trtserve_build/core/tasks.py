"""Task registry: what each task's encoder (or decoder) computes and what its model returns.

A task declares, once, the encoder's ONNX outputs (with dynamic axes), the ensemble's
public outputs, the Hugging Face class its checkpoint loads as (models/loader.py) and the
head the exported graph holds (models/heads.py). ``generation`` is the one decoder task: a
GPT-2-architecture causal LM exported with past key/values (models/gpt2.py), served as the
decoupled, streaming ``generate`` model. Unknown task names are a
:class:`~trtserve_build.core.errors.SpecError` that lists the known ones.
"""
from __future__ import annotations

from dataclasses import dataclass, field
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
    #: The ensemble's inputs (TEXT, or QUESTION and CONTEXT).
    ensemble_inputs: tuple[TensorDecl, ...] = field(default_factory=lambda: (TEXT_DECL,))
    #: Windowed tasks: one encoder row per window; the tokenizer also hands the postprocess
    #: WINDOW_DECLS (trtserve_backend.windows), and the encoder output has a token axis.
    windowed: bool = False
    #: Windowed tasks whose postprocess also reads the token ids (NER: the words of the entities).
    postprocess_reads_token_ids: bool = False
    #: A causal LM with past key/values, served as one decoupled Python model (no ensemble).
    decoder: bool = False


ENCODER_INPUT_DECLS = tuple(TensorDecl(n, "TYPE_INT64", (-1,)) for n in contract.ENCODER_INPUTS)
TEXT_DECL = TensorDecl(contract.TEXT, "TYPE_STRING", (1,))
QA_INPUT_DECLS = (TensorDecl(contract.QUESTION, "TYPE_STRING", (1,)), TensorDecl(contract.CONTEXT, "TYPE_STRING", (1,)))
#: Tokenizer -> postprocess tensors of the windowed tasks (one row per window).
WINDOW_DECLS = (
    TensorDecl(contract.TOKEN_SPANS, "TYPE_INT32", (-1, 2)),
    TensorDecl(contract.WINDOW_ITEM, "TYPE_INT32", (1,)),
    TensorDecl(contract.ITEM_TEXT, "TYPE_STRING", (1,)),
)

#: The ``generate`` model's public tensors; every input but PROMPT is optional.
GENERATE_INPUT_DECLS = (
    TensorDecl(contract.PROMPT, "TYPE_STRING", (1,)),
    TensorDecl(contract.MAX_NEW_TOKENS, "TYPE_INT32", (1,)),
    TensorDecl(contract.TEMPERATURE, "TYPE_FP32", (1,)),
    TensorDecl(contract.TOP_P, "TYPE_FP32", (1,)),
    TensorDecl(contract.SEED, "TYPE_INT64", (1,)),
    TensorDecl(contract.STOP, "TYPE_STRING", (-1,)),
)
GENERATE_OUTPUT_DECLS = (
    TensorDecl(contract.TEXT, "TYPE_STRING", (1,)),
    TensorDecl(contract.FINISH_REASON, "TYPE_STRING", (1,)),
    TensorDecl(contract.TOKENS, "TYPE_INT32", (1,)),
)

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
    contract.QUESTION_ANSWERING: Task(
        name=contract.QUESTION_ANSWERING,
        needs_labels=False,
        encoder_output=lambda hidden, labels: TensorDecl(contract.LOGITS, "TYPE_FP32", (-1, 2)),
        ensemble_outputs=lambda hidden, labels: (
            TensorDecl(contract.ANSWER, "TYPE_STRING", (1,)),
            TensorDecl(contract.SCORE, "TYPE_FP32", (1,)),
            TensorDecl(contract.START, "TYPE_INT32", (1,)),
            TensorDecl(contract.END, "TYPE_INT32", (1,)),
        ),
        description="extractive question answering over context windows: start/end logits per token, "
                    "spans scored across windows as transformers' question-answering pipeline",
        hf_auto_class="AutoModelForQuestionAnswering",
        encoder_output_name=contract.LOGITS,
        ensemble_inputs=QA_INPUT_DECLS,
        windowed=True,
    ),
    contract.TOKEN_CLASSIFICATION: Task(
        name=contract.TOKEN_CLASSIFICATION,
        needs_labels=True,
        encoder_output=lambda hidden, labels: TensorDecl(contract.LOGITS, "TYPE_FP32", (-1, labels)),
        ensemble_outputs=lambda hidden, labels: (TensorDecl(contract.ENTITIES, "TYPE_STRING", (1,)),),
        description="token classification (NER) over text windows: label logits per token, entities "
                    "aggregated and merged across windows as transformers' token-classification pipeline",
        hf_auto_class="AutoModelForTokenClassification",
        encoder_output_name=contract.LOGITS,
        windowed=True,
        postprocess_reads_token_ids=True,
    ),
    contract.GENERATION_TASK: Task(
        name=contract.GENERATION_TASK,
        needs_labels=False,
        encoder_output=lambda hidden, labels: TensorDecl(contract.LOGITS, "TYPE_FP32", (-1, -1)),
        ensemble_outputs=lambda hidden, labels: GENERATE_OUTPUT_DECLS,
        description="text generation (GPT-2 family): next-token logits with past key/values, streamed "
                    "token by token, concurrent sequences batched step by step",
        hf_auto_class="AutoModelForCausalLM",
        encoder_output_name=contract.LOGITS,
        ensemble_inputs=GENERATE_INPUT_DECLS,
        decoder=True,
    ),
}


def get_task(name: str, where: str | None = None) -> Task:
    """The registered task ``name``; ``where`` (the spec file) prefixes the error message."""
    try:
        return TASKS[name]
    except KeyError:
        prefix = f"{where}: " if where else ""
        raise UnknownTaskError(f"{prefix}unknown task {name!r}; known tasks: {sorted(TASKS)}") from None
