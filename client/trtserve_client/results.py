"""Result types, and their decoding from the ensembles' output tensors.

The decoders are pure functions over numpy arrays so they are tested without a server; they
check what the server returned against the task contract and raise :class:`InferenceError`
with the numbers when it does not fit (a model deployed under the wrong name, labels given in
the wrong order, ...).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import trtserve_contract as contract

from .errors import InferenceError

__all__ = ["Answer", "Classification", "DEFAULT_LABELS", "Entity", "decode_answers", "decode_classifications",
           "decode_embeddings", "decode_entities"]

DEFAULT_LABELS: tuple[str, ...] = contract.SENTIMENT_LABELS

# SCORE is PROBABILITIES[argmax] computed server-side in fp32; allow for fp32 rounding only.
_SCORE_TOLERANCE = 1e-4


@dataclass(frozen=True)
class Classification:
    """One text's classification.

    ``label`` is the server's ``LABEL``, ``score`` its probability (``SCORE``), and
    ``probabilities`` maps every label name to its probability (``PROBABILITIES``, keyed by the
    ``labels`` the client was given, in the model's output order).
    """

    label: str
    score: float
    probabilities: dict[str, float]


def _as_rows(array: np.ndarray | None, name: str, count: int) -> np.ndarray:
    if array is None:
        raise InferenceError(f"the response has no {name} output")
    array = np.asarray(array)
    if array.ndim == 0 or array.shape[0] != count:
        raise InferenceError(
            f"{name} has shape {list(array.shape)}, expected {count} row(s) for {count} text(s)"
        )
    return array.reshape(count, -1)


def _decode_label(value: object) -> str:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8")
    if isinstance(value, np.bytes_):
        return value.tobytes().decode("utf-8")
    return str(value)


def decode_classifications(
    label: np.ndarray | None,
    score: np.ndarray | None,
    probabilities: np.ndarray | None,
    count: int,
    labels: Sequence[str] = DEFAULT_LABELS,
) -> list[Classification]:
    """Build :class:`Classification` objects from ``LABEL`` ``[n,1]``, ``SCORE`` ``[n,1]`` and
    ``PROBABILITIES`` ``[n,len(labels)]`` (a missing batch axis is tolerated when ``count==1``).

    Checks that there is one row per text, one probability per label name, that ``LABEL`` is
    one of ``labels`` and that ``SCORE`` equals the probability at that label's position (which
    catches ``labels`` given in the wrong order).
    """
    label_rows = _as_rows(label, contract.LABEL, count)
    score_rows = _as_rows(score, contract.SCORE, count).astype(np.float64)
    prob_rows = _as_rows(probabilities, contract.PROBABILITIES, count).astype(np.float64)
    labels = tuple(labels)
    if prob_rows.shape[1] != len(labels):
        raise InferenceError(
            f"{contract.PROBABILITIES} has {prob_rows.shape[1]} values per text but {len(labels)} label "
            f"names were given ({', '.join(labels)}); pass labels= matching the model"
        )
    results = []
    for row in range(count):
        name = _decode_label(label_rows[row, 0])
        if name not in labels:
            raise InferenceError(
                f"the server returned {contract.LABEL} {name!r}, not one of labels={labels}; "
                "pass labels= matching the model"
            )
        probs = {label_name: float(p) for label_name, p in zip(labels, prob_rows[row])}
        score_value = float(score_rows[row, 0])
        if abs(probs[name] - score_value) > _SCORE_TOLERANCE:
            raise InferenceError(
                f"{contract.SCORE} {score_value:.6f} for {contract.LABEL} {name!r} differs from its probability "
                f"{probs[name]:.6f} under labels={labels}; are the labels in the model's order?"
            )
        results.append(Classification(label=name, score=score_value, probabilities=probs))
    return results


def decode_embeddings(embedding: np.ndarray | None, count: int) -> np.ndarray:
    """``EMBEDDING`` as a C-contiguous float32 array ``[count, dim]``."""
    rows = _as_rows(embedding, contract.EMBEDDING, count)
    return np.ascontiguousarray(rows, dtype=np.float32)


@dataclass(frozen=True)
class Answer:
    """The answer to one question: ``context[start:end] == text`` (character offsets, end
    exclusive). No answer (the model prefers none): ``text == ""`` and ``start == end == -1``."""

    text: str
    score: float
    start: int
    end: int

    @property
    def found(self) -> bool:
        return self.start >= 0


@dataclass(frozen=True)
class Entity:
    """One entity (or token, for aggregation ``none``) as the token-classification pipeline
    reports it: ``label`` is its ``entity_group`` (or ``entity``), ``text[start:end]`` the span it
    covers, ``word`` the tokenizer's rendering of it, ``index`` the token index (``none`` only)."""

    label: str
    score: float
    word: str
    start: int
    end: int
    index: int | None = None


def decode_answers(answer: np.ndarray | None, score: np.ndarray | None, start: np.ndarray | None,
                   end: np.ndarray | None, contexts: Sequence[str]) -> list[Answer]:
    """:class:`Answer` objects from ``ANSWER``/``SCORE``/``START``/``END`` ``[n,1]``; checks
    that each answer is the context's text at its offsets (the contract)."""
    count = len(contexts)
    texts = _as_rows(answer, contract.ANSWER, count)
    scores = _as_rows(score, contract.SCORE, count).astype(np.float64)
    starts = _as_rows(start, contract.START, count).astype(np.int64)
    ends = _as_rows(end, contract.END, count).astype(np.int64)
    results = []
    for row, context in enumerate(contexts):
        text, a, b = _decode_label(texts[row, 0]), int(starts[row, 0]), int(ends[row, 0])
        if (a, b) == (-1, -1) and text == "" or text and 0 <= a < b <= len(context) and context[a:b] == text:
            results.append(Answer(text, float(scores[row, 0]), a, b))
            continue
        raise InferenceError(f"{contract.ANSWER} {text!r} is not CONTEXT[{a}:{b}] of item {row}")
    return results


def decode_entities(entities: np.ndarray | None, count: int) -> list[list[Entity]]:
    """One list of :class:`Entity` per text from ``ENTITIES`` ``[n,1]`` (JSON arrays)."""
    import json

    rows = _as_rows(entities, contract.ENTITIES, count)
    results = []
    for row in range(count):
        try:
            items = json.loads(_decode_label(rows[row, 0]))
            results.append([Entity(label=e["entity_group"] if "entity_group" in e else e["entity"],
                                   score=float(e["score"]), word=e["word"], start=int(e["start"]),
                                   end=int(e["end"]), index=e.get("index")) for e in items])
        except (ValueError, KeyError, TypeError) as e:
            raise InferenceError(f"{contract.ENTITIES} of item {row} is not a JSON array of entities: {e}") from e
    return results
