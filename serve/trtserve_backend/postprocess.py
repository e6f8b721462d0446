"""Task postprocessing (the logic behind ``<name>_postprocess``); pure numpy."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import trtserve_contract as contract


def softmax(logits: np.ndarray) -> np.ndarray:
    """Numerically stable softmax over the last axis, computed in float64."""
    x = logits.astype(np.float64)
    x -= x.max(axis=-1, keepdims=True)
    np.exp(x, out=x)
    x /= x.sum(axis=-1, keepdims=True)
    return x


class Classifier:
    """[n, k] logits -> (LABEL [n,1] bytes objects, SCORE [n,1] fp32, PROBABILITIES [n,k] fp32).

    The label names are encoded once; each call is a handful of numpy operations (the
    postprocess model runs this once per request, right after the encoder has flushed the
    CPU caches, so every operation counts at concurrency 1).
    """

    def __init__(self, labels: Sequence[str]):
        self.labels = np.array([name.encode("utf-8") for name in labels], dtype=np.object_)

    def __call__(self, logits: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if logits.ndim != 2 or logits.shape[1] != len(self.labels):
            raise ValueError(f"logits shape {logits.shape} does not match {len(self.labels)} labels")
        probs = softmax(logits).astype(np.float32)
        best = probs.argmax(axis=-1)
        return self.labels[best].reshape(-1, 1), probs.max(axis=-1, keepdims=True), probs


def classify(logits: np.ndarray, labels: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """[n, k] logits -> (LABEL [n,1] bytes objects, SCORE [n,1] fp32, PROBABILITIES [n,k] fp32)."""
    return Classifier(labels)(logits)


def l2_normalize(vectors: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Row-wise L2 normalisation (as sentence-transformers' Normalize), returned as fp32."""
    v = vectors.astype(np.float64)
    norms = np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), eps)
    return (v / norms).astype(np.float32)


class Embedder:
    """[n, d] pooled vectors -> {EMBEDDING: [n, d] fp32}, L2-normalised."""

    def __call__(self, pooled: np.ndarray) -> dict[str, np.ndarray]:
        return {contract.EMBEDDING: l2_normalize(pooled)}


class LabelledClassifier:
    """[n, k] logits -> {LABEL, SCORE, PROBABILITIES} (see :class:`Classifier`)."""

    def __init__(self, labels: Sequence[str]):
        self.classify = Classifier(labels)
        #: the values LABEL can take (a Python model makes each one's response tensor once)
        self.fixed_values = {contract.LABEL: tuple(self.classify.labels)}

    def __call__(self, logits: np.ndarray) -> dict[str, np.ndarray]:
        names, scores, probs = self.classify(logits)
        return {contract.LABEL: names, contract.SCORE: scores, contract.PROBABILITIES: probs}
