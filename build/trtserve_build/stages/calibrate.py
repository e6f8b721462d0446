"""INT8 calibration: absolute ranges of the MatMul/Gemm inputs, collected on real text.

The FP32 export runs under ONNX Runtime (its FP32 kernels compute what the graph says) on
texts of the deployment's *training* split -- never the held-out split that the fidelity
report scores. Every MatMul/Gemm input chosen by :func:`trtserve_build.graph.qdq.int8_targets`
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

from ..core.enums import CALIBRATION_METHODS
from ..core.errors import CalibrationError
from ..core.files import write_text_atomic
from ..core.lazy import lazy_import
from ..core.paths import calibration_path
from ..core.stamps import read_json
from ..data.texts import calibration_texts
from ..graph.histogram import DEFAULT_PERCENTILE, AbsHistogram
from ..graph.onnx_graph import MAX_IR_VERSION, infer_types
from ..graph.qdq import int8_targets

onnx = lazy_import("onnx")
onnx_helper = lazy_import("onnx.helper")
ort = lazy_import("onnxruntime")

log = logging.getLogger(__name__)


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
    types = infer_types(model)
    m = onnx.ModelProto()
    m.CopyFrom(model)
    existing = {o.name for o in m.graph.output}
    for name in tensors:
        if types.get(name) != onnx.TensorProto.FLOAT:
            raise CalibrationError(f"tensor {name!r} is not an FP32 tensor of the graph (type {types.get(name)})")
        if name not in existing:
            m.graph.output.append(onnx_helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
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
def calibrate_spec(spec, model, onnx_sha256: str, export_folder: Path, encode, *, force: bool = False) -> CalibrationResult:
    """Calibrate ``spec``'s FP32 graph as its ``[precision]`` section says (cached)."""
    p = spec.precision
    texts = calibration_texts(spec)
    path = calibration_path(export_folder, p.calibration_method)
    key = {"onnx_sha256": onnx_sha256, "texts_sha256": texts_digest(texts), "method": p.calibration_method,
           "percentile": p.calibration_percentile, "int8_matmuls": p.int8_matmuls}
    cached = None if force else read_json(path)
    if cached is not None and {k: cached.get(k) for k in key} == key:  # the result records its own key
        log.info("%s: calibration is current (%s)", spec.name, path)
        return CalibrationResult(**cached)
    result = calibrate(
        model, texts, encode, method=p.calibration_method, percentile=p.calibration_percentile,
        int8_matmuls=p.int8_matmuls, onnx_sha256=onnx_sha256,
    )
    write_text_atomic(path, result.to_json())
    return result
