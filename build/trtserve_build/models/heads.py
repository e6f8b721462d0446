"""The one task head: what the exported graph, the TorchScript engine and the benchmarks compute
on top of a Hugging Face model, per task of the registry (core/tasks.py).

``classification``: the logits of ``...ForSequenceClassification``; ``embedding``: the mean of
the last hidden state over real (unmasked) tokens, as sentence-transformers. Both return FP32
(an FP16 model's output is cast; pooling runs in FP32, since a sum over 256 tokens loses
digits in FP16). For an FP32 model no cast is traced, so the exported graph is unchanged.
"""
from __future__ import annotations

import functools

import trtserve_contract as contract

from ..core.errors import ExportError
from ..core.lazy import lazy_import

torch = lazy_import("torch")

HEAD_TASKS = (contract.CLASSIFICATION, contract.EMBEDDING_TASK)


@functools.cache
def _task_module_class():
    class TaskModule(torch.nn.Module):
        """``forward(input_ids, attention_mask[, token_type_ids])`` -> the task output in FP32."""

        def __init__(self, inner, task: str):
            super().__init__()
            if task not in HEAD_TASKS:
                raise ExportError(f"no task head for task {task!r}; known: {HEAD_TASKS}")
            self.inner = inner
            self.task = task

        def forward(self, input_ids, attention_mask, token_type_ids=None):
            out = self.inner(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
            if self.task == contract.CLASSIFICATION:
                logits = out.logits
                return logits if logits.dtype == torch.float32 else logits.float()
            hidden = out.last_hidden_state
            if hidden.dtype != torch.float32:
                hidden = hidden.float()
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)

    return TaskModule


def task_module(hf_model, task: str):
    """Wrap a Hugging Face model (``...ForSequenceClassification`` or the bare encoder) for ``task``,
    in eval mode (dropout off)."""
    return _task_module_class()(hf_model, task).eval()
