"""Task postprocessing (the logic behind ``<name>_postprocess``); pure numpy."""
from __future__ import annotations

from typing import Sequence

import numpy as np


def softmax(logits: np.ndarray) -> np.ndarray:
    """Numerically stable softmax over the last axis, computed in float64."""
    x = logits.astype(np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=-1, keepdims=True)


def classify(logits: np.ndarray, labels: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """[n, k] logits -> (LABEL [n,1] bytes objects, SCORE [n,1] fp32, PROBABILITIES [n,k] fp32)."""
    if logits.ndim != 2 or logits.shape[1] != len(labels):
        raise ValueError(f"logits shape {logits.shape} does not match {len(labels)} labels")
    probs = softmax(logits)
    best = probs.argmax(axis=-1)
    names = np.array([labels[i].encode("utf-8") for i in best], dtype=np.object_).reshape(-1, 1)
    scores = probs[np.arange(len(best)), best].astype(np.float32).reshape(-1, 1)
    return names, scores, probs.astype(np.float32)


def l2_normalize(vectors: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Row-wise L2 normalisation (as sentence-transformers' Normalize), returned as fp32."""
    v = vectors.astype(np.float64)
    norms = np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), eps)
    return (v / norms).astype(np.float32)
