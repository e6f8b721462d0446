"""Choosing the next token from a row of logits: greedy, temperature, nucleus (top-p).

Every sequence owns a :class:`Sampler` with its own random generator, seeded from the request's
``SEED`` (or from the OS when absent), so a seeded request draws the same tokens whatever other
sequences share its decode steps.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


class SamplingError(ValueError):
    """Sampling settings out of range; the message names the setting."""


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    seed: int | None = None

    def __post_init__(self) -> None:
        if not np.isfinite(self.temperature) or self.temperature < 0:
            raise SamplingError(f"TEMPERATURE must be a finite number >= 0 (0 = greedy), got {self.temperature}")
        if not np.isfinite(self.top_p) or not 0 < self.top_p <= 1:
            raise SamplingError(f"TOP_P must be in (0, 1], got {self.top_p}")
        if self.seed is not None and self.seed < 0:
            raise SamplingError(f"SEED must be >= 0, got {self.seed}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def greedy_token(logits: np.ndarray) -> int:
    """argmax; ties go to the lowest id, as ``torch.argmax`` in Hugging Face ``generate`` does."""
    return int(np.argmax(logits))


def greedy_tokens(logits: np.ndarray) -> np.ndarray:
    """:func:`greedy_token` of every row of ``logits`` [n, vocab] in one call."""
    return np.argmax(logits, axis=-1)


def nucleus_probabilities(logits: np.ndarray, temperature: float, top_p: float) -> np.ndarray:
    """Softmax of ``logits / temperature`` with everything outside the top-p nucleus zeroed, renormalised.

    The nucleus is the smallest set of most likely tokens whose probability reaches ``top_p``
    (the most likely token is always in it).
    """
    scaled = logits.astype(np.float64) / temperature
    scaled -= scaled.max()
    probs = np.exp(scaled)
    probs /= probs.sum()
    if top_p < 1.0:
        order = np.argsort(-probs, kind="stable")
        cumulative = np.cumsum(probs[order])
        keep = int(np.searchsorted(cumulative, top_p, side="left")) + 1
        mask = np.zeros_like(probs, dtype=bool)
        mask[order[:keep]] = True
        probs = np.where(mask, probs, 0.0)
        probs /= probs.sum()
    return probs


class Sampler:
    """Next-token choice for one sequence."""

    def __init__(self, params: SamplingParams):
        self.params = params
        self._rng = np.random.Generator(np.random.PCG64(params.seed)) if not params.greedy else None

    @property
    def greedy(self) -> bool:
        """The choice is the argmax: the engine may take it on the device (no logits needed)."""
        return self._rng is None

    def __call__(self, logits: np.ndarray) -> int:
        if self._rng is None:
            return greedy_token(logits)
        probs = nucleus_probabilities(logits, self.params.temperature, self.params.top_p)
        # Inverse-CDF with one uniform draw per token: the draw sequence depends only on the seed.
        cdf = np.cumsum(probs)
        return int(np.searchsorted(cdf, self._rng.random() * cdf[-1], side="right"))
