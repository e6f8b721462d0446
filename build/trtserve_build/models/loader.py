"""The one Hugging Face loader: task -> model class (from the task registry), for export,
TorchScript, training and the benchmark matrix. Never downloads."""
from __future__ import annotations

import copy
import inspect
from pathlib import Path
from typing import Sequence

import trtserve_contract as contract

from ..core.errors import ExportError
from ..core.lazy import lazy_import
from ..core.tasks import get_task

torch = lazy_import("torch")
transformers = lazy_import("transformers")


def _auto_class(task: str):
    return getattr(transformers, get_task(task).hf_auto_class)


def _extra_kwargs(task: str, config) -> dict:
    """The embedding head pools the last hidden state itself: no pooler weights, where the
    architecture has a pooler to leave out (BERT, RoBERTa, ELECTRA... but not DistilBERT,
    DeBERTa-v2 or MPNet, whose constructors take no such argument)."""
    if task != contract.EMBEDDING_TASK:
        return {}
    model_class = transformers.AutoModel._model_mapping[type(config)]
    takes = inspect.signature(model_class.__init__).parameters
    return {"add_pooling_layer": False} if "add_pooling_layer" in takes else {}


def load_task_model(checkpoint: str | Path, task: str, *, labels: Sequence[str] | None = None,
                    attn_implementation: str = "eager"):
    """The checkpoint as the task's Hugging Face class; ``labels`` (classification) must match
    the checkpoint's head."""
    config = transformers.AutoConfig.from_pretrained(str(checkpoint))
    model = _auto_class(task).from_pretrained(str(checkpoint), attn_implementation=attn_implementation,
                                              **_extra_kwargs(task, config))
    labelled = task in (contract.CLASSIFICATION, contract.TOKEN_CLASSIFICATION)
    if labelled and labels is not None and model.config.num_labels != len(labels):
        raise ExportError(
            f"checkpoint {checkpoint} has {model.config.num_labels} labels, "
            f"the spec lists {len(labels)}: {list(labels)}"
        )
    return model.eval()


def new_classifier(base: str | Path, labels: Sequence[str], seed: int):
    """The base encoder with a fresh, seeded classification head named after ``labels`` (training)."""
    torch.manual_seed(seed)
    return _auto_class(contract.CLASSIFICATION).from_pretrained(
        str(base),
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={name: i for i, name in enumerate(labels)},
        problem_type="single_label_classification",
    )


def seeded_task_model(base: str | Path, task: str, labels: Sequence[str], seed: int):
    """The base encoder with a task head drawn from ``seed`` (labels name its classes, if any):
    exercises every stage; its predictions are arbitrary."""
    torch.manual_seed(seed)
    kwargs = {"num_labels": len(labels), "id2label": dict(enumerate(labels)),
              "label2id": {name: i for i, name in enumerate(labels)}} if labels else {}
    return _auto_class(task).from_pretrained(str(base), **kwargs).eval()


def random_task_model(config, task: str, seed: int = 0, labels: Sequence[str] | None = None):
    """A model of ``config``'s architecture (a ``PretrainedConfig`` or a config.json path) with
    seeded random weights: right for engine building and latency, useless for accuracy.
    ``labels``: the classes of a labelled task's head (default: the config's)."""
    if not hasattr(config, "to_dict"):
        config = transformers.AutoConfig.from_pretrained(str(config))
    if labels:
        config = copy.deepcopy(config)
        config.id2label, config.label2id = dict(enumerate(labels)), {name: i for i, name in enumerate(labels)}
        config.num_labels = len(labels)
    torch.manual_seed(seed)
    return _auto_class(task).from_config(config, **_extra_kwargs(task, config)).eval()
