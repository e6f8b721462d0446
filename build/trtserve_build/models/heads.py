"""The one task head: what the exported graph, the TorchScript engine and the benchmarks compute
on top of a Hugging Face model, per task of the registry (core/tasks.py).

``classification``: the logits of ``...ForSequenceClassification``; ``embedding``: the mean of
the last hidden state over real (unmasked) tokens, as sentence-transformers;
``question_answering``: start and end logits per token, stacked as [batch, tokens, 2];
``token_classification``: the label logits per token, [batch, tokens, labels]. Both return FP32
(an FP16 model's output is cast; pooling runs in FP32, since a sum over 256 tokens loses
digits in FP16). For an FP32 model no cast is traced, so the exported graph is unchanged.
"""
from __future__ import annotations

import functools
from typing import Sequence

import numpy as np
import trtserve_contract as contract

from ..core.architectures import architecture_of
from ..core.errors import ExportError
from ..core.lazy import lazy_import

torch = lazy_import("torch")

HEAD_TASKS = (contract.CLASSIFICATION, contract.EMBEDDING_TASK, contract.QUESTION_ANSWERING,
              contract.TOKEN_CLASSIFICATION)


@functools.cache
def _task_module_class():
    class TaskModule(torch.nn.Module):
        """``forward(*inputs)`` in the order of ``input_names`` -> the task output in FP32.

        Exactly the architecture's encoder inputs are passed on (RoBERTa, DistilBERT, XLM-R,
        MPNet and DeBERTa-v3 get no ``token_type_ids``); position ids are the model's own.
        """

        def __init__(self, inner, task: str, input_names: tuple[str, ...]):
            super().__init__()
            if task not in HEAD_TASKS:
                raise ExportError(f"no task head for task {task!r}; known: {HEAD_TASKS}")
            if input_names[:2] != (contract.INPUT_IDS, contract.ATTENTION_MASK):
                raise ExportError(f"encoder inputs {input_names} must start with input_ids, attention_mask")
            self.inner = inner
            self.task = task
            self.input_names = input_names

        def forward(self, *inputs):
            feeds = dict(zip(self.input_names, inputs))
            out = self.inner(**feeds)
            if self.task in (contract.CLASSIFICATION, contract.TOKEN_CLASSIFICATION):
                logits = out.logits
                return logits if logits.dtype == torch.float32 else logits.float()
            if self.task == contract.QUESTION_ANSWERING:
                logits = torch.stack([out.start_logits, out.end_logits], dim=-1)
                return logits if logits.dtype == torch.float32 else logits.float()
            hidden = out.last_hidden_state
            if hidden.dtype != torch.float32:
                hidden = hidden.float()
            mask = feeds[contract.ATTENTION_MASK].unsqueeze(-1).to(hidden.dtype)
            return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)

    return TaskModule


def task_module(hf_model, task: str, input_names: Sequence[str] | None = None):
    """Wrap a Hugging Face model (``...ForSequenceClassification`` or the bare encoder) for ``task``,
    in eval mode (dropout off). ``input_names``: the encoder inputs in call order (default: those
    of the model's architecture, core/architectures.py)."""
    names = tuple(input_names) if input_names is not None else architecture_of(hf_model.config.model_type).inputs
    return _task_module_class()(hf_model, task, names).eval()


def run_rows(module, feeds: tuple, chunk: int = 16):
    """``module`` over check rows (a tuple of [n, seq] tensors) in chunks -> FP32 numpy [n, ...].

    Chunks keep CPU FP16 runs small; optimized_execution(False) runs a TorchScript module in the
    plain interpreter, as the serving engine does (no TorchScript fusion, whose different rounding
    would blur a trace check)."""
    outs = []
    with torch.no_grad(), torch.jit.optimized_execution(False):
        for start in range(0, len(feeds[0]), chunk):
            outs.append(module(*(t[start:start + chunk] for t in feeds)).detach().float().cpu().numpy())
    return np.concatenate(outs)
