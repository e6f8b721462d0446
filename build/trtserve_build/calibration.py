"""INT8 calibration: absolute ranges of the MatMul/Gemm inputs, collected on real text.

The FP32 export runs under ONNX Runtime (its FP32 kernels compute what the graph says) on
texts of the deployment's *training* split -- never the held-out split that the fidelity
report scores. Every MatMul/Gemm input chosen by :func:`trtserve_build.precision.int8_targets`
becomes an extra graph output; a histogram of its absolute values is accumulated over all
batches, and a method turns each histogram into the range ``amax`` (scale = amax / 127):

``percentile``
    the smallest value that covers ``percentile`` % of all observed values (default 99.999);
``entropy``
    TensorRT's legacy calibrator: the clipping threshold whose 128-level quantized
    distribution has the least KL divergence from the observed one;
``max``
    the largest observed value (outliers included).

Results are cached as ``<export dir>/calibration-<method>.json``, keyed by the FP32 ONNX
file, the texts and the settings.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

log = logging.getLogger(__name__)

CALIBRATION_METHODS = ("percentile", "entropy", "max")
DEFAULT_PERCENTILE = 99.999
#: Histogram resolution: bins of the width the first batch's range / NUM_BINS; the bin count
#: grows with the range and is halved (pairs merged) when it passes MAX_BINS.
NUM_BINS = 2048
MAX_BINS = 16384
#: 127 positive levels of symmetric INT8 (+1 for the zero bin), as TensorRT counts them.
QUANT_LEVELS = 128


class CalibrationError(RuntimeError):
    """Calibration could not produce a usable range; the message says for which tensor."""


# ---------------------------------------------------------------------------------------
# Histograms and range methods
# ---------------------------------------------------------------------------------------
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


# ---------------------------------------------------------------------------------------
# Collection with ONNX Runtime
# ---------------------------------------------------------------------------------------
@dataclass
class CalibrationResult:
    """Calibrated activation ranges, keyed by the FP32 graph's tensor names."""

    method: str
    percentile: float
    int8_matmuls: str
    samples: int
    batches: int
    texts_sha256: str
    onnx_sha256: str
    amax: dict[str, float]
    max_seen: dict[str, float]
    seconds: float

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> "CalibrationResult":
        return cls(**json.loads(text))

    def summary(self) -> dict:
        """What the transform report records (the ranges themselves stay in the cache file)."""
        ratios = [self.amax[k] / self.max_seen[k] for k in self.amax if self.max_seen.get(k)]
        return {
            "method": self.method,
            "percentile": self.percentile if self.method == "percentile" else None,
            "samples": self.samples,
            "tensors": len(self.amax),
            "median_clip_ratio": round(float(np.median(ratios)), 4) if ratios else None,
            "texts_sha256": self.texts_sha256,
        }


def texts_digest(texts: Sequence[str]) -> str:
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode("utf-8"))
        h.update(b"\x00")
    return h.hexdigest()


def length_sorted_batches(texts: Sequence[str], batch_size: int) -> list[list[str]]:
    """Texts sorted by length and cut into batches, so padding stays small."""
    ordered = sorted(texts, key=len)
    return [ordered[i:i + batch_size] for i in range(0, len(ordered), batch_size)]


def collect_ranges(
    model,
    tensors: Sequence[str],
    batches: Iterable[Mapping[str, np.ndarray]],
    *,
    intra_op_threads: int = 0,
) -> dict[str, AbsHistogram]:
    """Run the FP32 ``model`` (``onnx.ModelProto``) on ``batches`` with ``tensors`` exposed as
    outputs; return one :class:`AbsHistogram` per tensor."""
    import onnx
    import onnxruntime as ort
    from onnx import helper

    from .precision import MAX_IR_VERSION, infer_types

    types = infer_types(model)
    m = onnx.ModelProto()
    m.CopyFrom(model)
    existing = {o.name for o in m.graph.output}
    for name in tensors:
        if types.get(name) != onnx.TensorProto.FLOAT:
            raise CalibrationError(f"tensor {name!r} is not an FP32 tensor of the graph (type {types.get(name)})")
        if name not in existing:
            m.graph.output.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    m.ir_version = min(m.ir_version, MAX_IR_VERSION)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    if intra_op_threads:
        options.intra_op_num_threads = intra_op_threads
    session = ort.InferenceSession(m.SerializeToString(), options, providers=["CPUExecutionProvider"])
    graph_inputs = [i.name for i in session.get_inputs()]
    hists = {name: AbsHistogram() for name in tensors}
    for feeds in batches:
        values = session.run(list(tensors), {n: feeds[n] for n in graph_inputs})
        for name, value in zip(tensors, values):
            hists[name].update(value)
    return hists


def calibrate(
    model,
    texts: Sequence[str],
    encode,
    *,
    method: str = "percentile",
    percentile: float = DEFAULT_PERCENTILE,
    int8_matmuls: str = "linear",
    batch_size: int = 16,
    onnx_sha256: str = "",
) -> CalibrationResult:
    """Calibrate the MatMul/Gemm inputs of the FP32 ``model`` on ``texts``.

    ``encode(texts) -> feeds`` tokenizes a batch exactly as the served tokenizer does.
    """
    from .precision import int8_targets

    if method not in CALIBRATION_METHODS:
        raise ValueError(f"calibration method {method!r}; known: {CALIBRATION_METHODS}")
    if not texts:
        raise CalibrationError("no calibration texts")
    started = time.perf_counter()
    tensors = sorted({t for _, _, t in int8_targets(model, int8_matmuls)})
    if not tensors:
        raise CalibrationError("the graph has no MatMul/Gemm inputs to calibrate")
    batches = length_sorted_batches(texts, batch_size)
    hists = collect_ranges(model, tensors, (encode(b) for b in batches))
    amax, max_seen = {}, {}
    for name, hist in hists.items():
        if hist.nonfinite:
            raise CalibrationError(f"{name}: {hist.nonfinite} NaN/Inf values in the FP32 graph's activations")
        try:
            amax[name] = float(hist.amax(method, percentile))
        except CalibrationError as e:
            raise CalibrationError(f"{name}: {e}") from None
        max_seen[name] = hist.max_seen
    result = CalibrationResult(
        method=method,
        percentile=percentile,
        int8_matmuls=int8_matmuls,
        samples=len(texts),
        batches=len(batches),
        texts_sha256=texts_digest(texts),
        onnx_sha256=onnx_sha256,
        amax=amax,
        max_seen=max_seen,
        seconds=round(time.perf_counter() - started, 2),
    )
    log.info("calibrated %d tensors on %d texts (%s) in %.1fs", len(amax), len(texts), method, result.seconds)
    return result


# ---------------------------------------------------------------------------------------
# Texts and the cached, spec-driven entry point
# ---------------------------------------------------------------------------------------
DEFAULT_HOLDOUT_FRACTION = 0.1
DEFAULT_SPLIT_SEED = 1234


def dataset_split(spec, dataset: str):
    """``(train, holdout)`` rows of ``dataset``: the spec's training split when it trains on
    that dataset, otherwise the same seeded 90/10 split. Calibration reads ``train`` only;
    the fidelity report scores ``holdout``."""
    from .data import load_dataset, split_holdout

    t = spec.training
    if t is not None and t.dataset == dataset:
        fraction, seed = t.holdout_fraction, t.seed
    else:
        fraction, seed = DEFAULT_HOLDOUT_FRACTION, DEFAULT_SPLIT_SEED
    return split_holdout(load_dataset(dataset), fraction, seed)


def calibration_texts(spec) -> list[str]:
    """``samples`` texts of the spec's calibration dataset, from its training split."""
    p = spec.precision
    train, _ = dataset_split(spec, p.calibration_dataset)
    if len(train) < p.calibration_samples:
        raise CalibrationError(
            f"{spec.name}: {p.calibration_dataset} has {len(train)} training texts, "
            f"precision.calibration_samples asks for {p.calibration_samples}"
        )
    return [r.text for r in train[: p.calibration_samples]]


def calibration_path(export_folder: Path, method: str) -> Path:
    return Path(export_folder) / f"calibration-{method}.json"


def calibrate_spec(spec, model, onnx_sha256: str, export_folder: Path, encode, *, force: bool = False) -> CalibrationResult:
    """Calibrate ``spec``'s FP32 graph as its ``[precision]`` section says (cached)."""
    p = spec.precision
    texts = calibration_texts(spec)
    path = calibration_path(export_folder, p.calibration_method)
    if not force and path.exists():
        try:
            cached = CalibrationResult.from_json(path.read_text())
            if (cached.onnx_sha256 == onnx_sha256 and cached.texts_sha256 == texts_digest(texts)
                    and cached.percentile == p.calibration_percentile and cached.int8_matmuls == p.int8_matmuls):
                log.info("%s: calibration is current (%s)", spec.name, path)
                return cached
        except (ValueError, TypeError, KeyError):
            pass
    result = calibrate(
        model, texts, encode, method=p.calibration_method, percentile=p.calibration_percentile,
        int8_matmuls=p.int8_matmuls, onnx_sha256=onnx_sha256,
    )
    path.write_text(result.to_json())
    return result
