"""Precision stage: ``<export dir>/<precision>.onnx`` (+ ``<precision>.json``) from the FP32
export, cached by what it was made from (the transformations: :mod:`trtserve_build.graph.transform`).

int8 needs calibrated activation ranges: the caller passes ``calibrate(model, source_sha)``
(the calibration stage, cached itself), run only when the graph must be (re)made.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Callable

from ..core.errors import PrecisionError
from ..core.files import sha256_file
from ..core.lazy import lazy_import
from ..core.paths import ONNX_FILE, export_dir, precision_onnx_path, transform_report_path
from ..core.stamps import read_json, write_stamp
from ..graph.onnx_graph import named_copy
from ..graph.policy import policy_for
from ..graph.transform import transform

onnx = lazy_import("onnx")

log = logging.getLogger(__name__)

#: ``calibrate(fp32 model with named nodes, source sha256) -> CalibrationResult``.
Calibrate = Callable[[object, str], object]


def wanted_key(spec, precision: str, source_sha: str) -> dict:
    """What ``precision``'s graph of ``spec`` is made from: the source graph, policy, calibration."""
    p = spec.precision
    key = {"source_sha256": source_sha, "policy": policy_for(precision, p.fp32_ops_extra).to_dict()}
    if precision == "int8":
        key["calibration"] = {"method": p.calibration_method, "percentile": p.calibration_percentile,
                              "samples": p.calibration_samples, "dataset": p.calibration_dataset,
                              "int8_matmuls": p.int8_matmuls}
    return key


def is_current(out: Path, key: dict) -> bool:
    """The graph exists, its record stores ``key`` and the graph is the one recorded."""
    record = read_json(transform_report_path(out))
    return (out.is_file() and record is not None and record.get("key") == key
            and record.get("onnx_sha256") == sha256_file(out))


def ensure_precision_onnx(spec, precision: str, *, calibrate: Calibrate | None = None, force: bool = False) -> Path:
    """Make ``<export dir>/<precision>.onnx`` from the FP32 export (which must exist), unless a
    current one is there; returns its path. int8 needs ``calibrate``."""
    source = export_dir(spec) / ONNX_FILE
    if precision == "fp32":
        return source
    if not source.is_file():
        raise PrecisionError(f"{spec.name}: no FP32 export at {source}; run `make engines` first")
    out = precision_onnx_path(spec, precision)
    source_sha = sha256_file(source)
    key = wanted_key(spec, precision, source_sha)
    if not force and is_current(out, key):
        log.info("%s: %s graph is current (%s)", spec.name, precision, out)
        return out
    model = onnx.load(str(source))
    amax, calib = None, None
    if precision == "int8":
        if calibrate is None:
            raise PrecisionError(f"{spec.name}: int8 needs calibration (no calibrate step given)")
        calib = calibrate(named_copy(model), source_sha)
        amax = calib.amax
    transformed, report = transform(
        model, precision, fp32_ops_extra=spec.precision.fp32_ops_extra,
        activation_amax=amax, int8_matmuls=spec.precision.int8_matmuls,
    )
    tmp = out.with_name(f".{out.name}.tmp")
    onnx.save(transformed, str(tmp))
    tmp.chmod(0o644)
    tmp.replace(out)
    report.source_sha256 = source_sha
    report.onnx_sha256 = sha256_file(out)
    report.calibration = calib.summary() if calib is not None else None
    data = json.loads(report.to_json())
    data["key"] = key
    write_stamp(transform_report_path(out), data, sort_keys=True)
    log.info("%s: wrote %s (%d FP32 / %d FP16 nodes, %d casts%s)", spec.name, out, report.fp32_nodes,
             report.fp16_nodes, report.casts_inserted,
             f", {report.quantized_matmuls} quantized MatMuls" if precision == "int8" else "")
    return out


def transform_file(onnx_path: Path, out: Path, precision: str, fp32_ops_extra=()) -> str:
    """fp16/hybrid of an FP32 graph file (no spec, no cache); returns the report as JSON."""
    if precision == "int8":
        raise PrecisionError("int8 needs a spec for its calibration texts")
    model, report = transform(onnx.load(str(onnx_path)), precision, fp32_ops_extra=fp32_ops_extra)
    onnx.save(model, str(out))
    return report.to_json()
