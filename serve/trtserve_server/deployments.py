"""Which served models are deployments, and which models serve each one.

A *deployment* is a model that honours the client contract (README, "The contract"):
the ``TYPE_STRING`` inputs and the outputs of one task (classification: ``TEXT`` ->
``LABEL``, ``SCORE``, ``PROBABILITIES``; embedding: ``TEXT`` -> ``EMBEDDING``; question
answering: ``QUESTION``, ``CONTEXT`` -> ``ANSWER``, ``SCORE``, ``START``, ``END``; token
classification: ``TEXT`` -> ``ENTITIES``; generation, the decoupled ``generate`` model:
``PROMPT`` -> ``TEXT``, ``FINISH_REASON``, ``TOKENS``). How it is served is not assumed: an ensemble's steps
(recursively) are the models behind it, and a single model (one Python model with the same name
and contract, say) is its own only model. The tokenizer step takes the same inputs, but its
outputs are token ids, so it is not a deployment.

Pure functions over the JSON model configs Triton serves (``GET /v2/models/<m>/config``), so
they are unit-tested without a server.
"""
from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import trtserve_contract as contract

__all__ = ["Deployment", "TASK_INPUTS", "TASK_OUTPUTS", "discover", "model_of_instance"]

#: task -> the string inputs a model takes to serve it (the client contract)
TASK_INPUTS: dict[str, frozenset[str]] = {
    contract.CLASSIFICATION: frozenset({contract.TEXT}),
    contract.EMBEDDING_TASK: frozenset({contract.TEXT}),
    contract.QUESTION_ANSWERING: frozenset({contract.QUESTION, contract.CONTEXT}),
    contract.TOKEN_CLASSIFICATION: frozenset({contract.TEXT}),
    contract.GENERATION_TASK: frozenset({contract.PROMPT}),
}
#: task -> the outputs a model must have to serve it (the client contract)
TASK_OUTPUTS: dict[str, frozenset[str]] = {
    contract.CLASSIFICATION: frozenset({contract.LABEL, contract.SCORE, contract.PROBABILITIES}),
    contract.EMBEDDING_TASK: frozenset({contract.EMBEDDING}),
    contract.QUESTION_ANSWERING: frozenset({contract.ANSWER, contract.SCORE, contract.START, contract.END}),
    contract.TOKEN_CLASSIFICATION: frozenset({contract.ENTITIES}),
    contract.GENERATION_TASK: frozenset({contract.TEXT, contract.FINISH_REASON, contract.TOKENS}),
}


@dataclass(frozen=True)
class Deployment:
    """``name`` is what clients call; ``models`` every model that serves it (``name`` first)."""

    name: str
    task: str
    models: tuple[str, ...]
    #: classification: class names in PROBABILITIES order, when a model's config names them
    labels: tuple[str, ...] = ()

    @property
    def steps(self) -> tuple[str, ...]:
        """The models behind ``name`` (``(name,)`` when it is served by a single model)."""
        return self.models[1:] or self.models


def _task(config: Mapping[str, Any]) -> str | None:
    """The task whose contract ``config`` honours: its string inputs and outputs."""
    inputs = {i.get("name") for i in config.get("input", []) if i.get("data_type") == "TYPE_STRING"}
    outputs = {o.get("name") for o in config.get("output", [])}
    for task, needed in TASK_OUTPUTS.items():
        if TASK_INPUTS[task] <= inputs and needed <= outputs:
            return task
    return None


def _steps(name: str, configs: Mapping[str, Mapping[str, Any]], seen: set[str]) -> list[str]:
    """``name``'s ensemble steps, depth first, each once (an ensemble's own steps follow it)."""
    out: list[str] = []
    for step in (configs.get(name, {}).get("ensemble_scheduling") or {}).get("step", []):
        model = step.get("model_name")
        if model and model not in seen:
            seen.add(model)
            out.append(model)
            out.extend(_steps(model, configs, seen))
    return out


def discover(configs: Mapping[str, Mapping[str, Any]]) -> list[Deployment]:
    """The deployments among ``configs`` ({model name: JSON config}), sorted by name."""
    found = []
    for name in sorted(configs):
        task = _task(configs[name])
        if task is not None:
            models = (name, *_steps(name, configs, {name}))
            found.append(Deployment(name, task, models, _labels(models, configs)))
    return found


def _labels(models: tuple[str, ...], configs: Mapping[str, Mapping[str, Any]]) -> tuple[str, ...]:
    """The ``labels`` parameter (a JSON list) of the first of ``models`` that has one."""
    for model in models:
        raw = (configs.get(model, {}).get("parameters") or {}).get("labels", {}).get("string_value")
        if raw:
            try:
                labels = json.loads(raw)
            except ValueError:
                continue
            if isinstance(labels, list) and all(isinstance(x, str) for x in labels):
                return tuple(labels)
    return ()


_INSTANCE_SUFFIX = re.compile(r"_\d+_\d+$")


def model_of_instance(instance: str, models: tuple[str, ...] | list[str]) -> str | None:
    """The model an instance name like ``sentiment_tokenizer_0_0`` belongs to, among ``models``
    (Triton names instances ``<model>_<group>_<index>``); ``None`` when none matches."""
    base = _INSTANCE_SUFFIX.sub("", instance)
    if base in models:
        return base
    candidates = [m for m in models if instance.startswith(m + "_")]
    return max(candidates, key=len) if candidates else None
