"""Histograms of absolute activation values and the methods that turn one into a range.

``percentile``: the smallest value that covers ``percentile`` % of all observed values;
``entropy``: TensorRT's legacy calibrator (least KL divergence of the 128-level quantized
distribution); ``max``: the largest observed value (outliers included).
"""
from __future__ import annotations

import numpy as np

from ..core.enums import CALIBRATION_METHODS
from ..core.errors import CalibrationError

DEFAULT_PERCENTILE = 99.999
#: Histogram resolution: bins of the width the first batch's range / NUM_BINS; the bin count
#: grows with the range and is halved (pairs merged) when it passes MAX_BINS.
NUM_BINS = 2048
MAX_BINS = 16384
#: 127 positive levels of symmetric INT8 (+1 for the zero bin), as TensorRT counts them.
QUANT_LEVELS = 128


class AbsHistogram:
    """A histogram of |x| with a fixed bin width and a growing number of bins."""

    def __init__(self, num_bins: int = NUM_BINS, max_bins: int = MAX_BINS) -> None:
        self.num_bins = num_bins
        self.max_bins = max_bins
        self.width: float | None = None
        self.counts = np.zeros(0, dtype=np.int64)
        self.max_seen = 0.0
        self.nonfinite = 0

    def update(self, values: np.ndarray) -> None:
        a = np.abs(np.asarray(values, dtype=np.float32).ravel())
        finite = np.isfinite(a)
        if not finite.all():
            self.nonfinite += int((~finite).sum())
            a = a[finite]
        if a.size == 0:
            return
        top = float(a.max())
        self.max_seen = max(self.max_seen, top)
        if self.width is None:
            self.width = max(top, 1e-8) / self.num_bins
            self.counts = np.zeros(self.num_bins, dtype=np.int64)
        needed = int(np.ceil(top / self.width)) if top > 0 else 1
        while needed > self.max_bins:  # merge pairs: same data, half the resolution
            if len(self.counts) % 2:
                self.counts = np.append(self.counts, 0)
            self.counts = self.counts.reshape(-1, 2).sum(axis=1)
            self.width *= 2
            needed = int(np.ceil(top / self.width))
        if needed > len(self.counts):
            self.counts = np.concatenate([self.counts, np.zeros(needed - len(self.counts), dtype=np.int64)])
        idx = np.minimum((a / self.width).astype(np.int64), len(self.counts) - 1)
        self.counts += np.bincount(idx, minlength=len(self.counts))

    @property
    def edges(self) -> np.ndarray:
        return np.arange(len(self.counts) + 1, dtype=np.float64) * (self.width or 0.0)

    def amax(self, method: str, percentile: float = DEFAULT_PERCENTILE) -> float:
        if self.width is None or self.counts.sum() == 0:
            raise CalibrationError("no values observed")
        if method == "max":
            return self.max_seen
        if method == "percentile":  # bin edges can pass the largest value: never beyond it
            return min(percentile_amax(self.counts, self.edges, percentile), self.max_seen)
        if method == "entropy":
            return min(entropy_amax(self.counts, self.edges), self.max_seen)
        raise ValueError(f"calibration method {method!r}; known: {CALIBRATION_METHODS}")


def percentile_amax(counts: np.ndarray, edges: np.ndarray, percentile: float) -> float:
    """Upper edge of the first bin at which the cumulative share reaches ``percentile`` %."""
    if not 0 < percentile <= 100:
        raise ValueError(f"percentile must lie in (0, 100], got {percentile}")
    cdf = np.cumsum(counts) / counts.sum()
    i = int(np.searchsorted(cdf, percentile / 100.0, side="left"))
    return float(edges[min(i + 1, len(edges) - 1)])


def entropy_amax(counts: np.ndarray, edges: np.ndarray, levels: int = QUANT_LEVELS, stride: int | None = None) -> float:
    """The KL-divergence-minimising clip threshold (TensorRT's entropy calibration).

    For each candidate threshold bin ``i``: P = the first ``i`` bins with everything beyond
    folded into bin ``i-1``; Q = those bins merged into ``levels`` quantization levels and
    spread back evenly over the non-empty bins. The threshold with the smallest KL(P || Q)
    wins (the last one on ties, as TensorRT).
    """
    hist = counts.astype(np.float64).copy()
    n = len(hist)
    if n <= levels:
        return float(edges[-1])
    hist[0] = hist[1]  # the zero bin (padding, ReLU zeros) would dominate every candidate
    stride = stride or max(1, (n - levels) // 1024)
    best_i, best_kl = n, np.inf
    for i in range(levels, n + 1, stride):
        p = hist[:i].copy()
        p[-1] += hist[i:].sum()
        nonzero = hist[:i] != 0
        level = np.minimum((np.arange(i) * levels) // i, levels - 1)
        level_sum = np.bincount(level, weights=hist[:i], minlength=levels)
        level_nonzero = np.bincount(level, weights=nonzero.astype(np.float64), minlength=levels)
        q = np.where(nonzero, level_sum[level] / np.maximum(level_nonzero[level], 1), 0.0)
        if q.sum() == 0 or p.sum() == 0:
            continue
        p /= p.sum()
        q /= q.sum()
        mask = p > 0
        if np.any(q[mask] == 0):
            kl = np.inf
        else:
            kl = float(np.sum(p[mask] * np.log(p[mask] / q[mask])))
        if kl <= best_kl:
            best_kl, best_i = kl, i
    return float(edges[min(best_i, len(edges) - 1)])
