"""Validation orchestration: every precision variant against the FP32 reference on real and
stress text (the fidelity report, ``make validate``), and the gate run after each build.

Executors, best first (each row names the one that produced it, and why better ones were not
used): the built TensorRT plan where a runtime and a GPU can run it; ONNX Runtime on the CPU
where it has kernels for every op in the graph's types; the FP16-faithful PyTorch interpreter
(runtime/interpreter.py) otherwise.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..core.errors import ExecutorUnavailableError
from ..core.files import sha256_file, write_text_atomic
from ..core.lazy import lazy_import
from ..core.paths import ONNX_FILE, export_dir, fidelity_cache_path, plan_path, precision_onnx_path
from ..core.spec import DeploymentSpec
from ..core.stamps import read_json
from ..data.texts import eval_sets, windowed_eval_items
from ..data.tokenizer import spec_encoder
from ..runtime.interpreter import TorchInterpreter
from ..runtime.onnxruntime import OrtExecutor
from ..runtime.tensorrt import TensorRTExecutor
from ..stages.fidelity import (
    REPORT_SCHEMA,
    VARIANT_PRECISIONS,
    DeploymentReport,
    Row,
    accuracy,
    compare,
    evaluate_gate,
    raise_for,
    row_line,
)
from ..stages.tensorrt import is_plan_current
from .steps import export, precision_graph
from .windowed import WindowedRunner, windowed_row

onnx = lazy_import("onnx")

log = logging.getLogger(__name__)

BATCH_SIZE = 32


def choose_executor(onnx_path: Path, plan: Path | None = None, *, precision: str | None = None,
                    allow_tensorrt: bool = True):
    """The best executor that runs ``onnx_path`` faithfully: ``(executor, refusals)``.

    A plan is used only when its build record says it was built from this very graph.
    """
    refusals: list[str] = []
    if allow_tensorrt:
        try:
            if plan is not None and Path(plan).is_file() and precision is not None:
                if not is_plan_current(plan, onnx_path, precision):
                    raise ExecutorUnavailableError(f"tensorrt: {plan} was not built from {onnx_path.name} (stale)")
            return TensorRTExecutor(plan), refusals
        except ExecutorUnavailableError as e:
            refusals.append(str(e))
    try:
        return OrtExecutor(onnx_path), refusals
    except ExecutorUnavailableError as e:
        refusals.append(str(e))
    try:
        return TorchInterpreter(onnx.load(str(onnx_path))), refusals
    except ExecutorUnavailableError as e:
        refusals.append(str(e))
    raise ExecutorUnavailableError(f"{onnx_path}: no executor can run it faithfully:\n  " + "\n  ".join(refusals))


@dataclass
class Runner:
    """One executor over length-sorted batches, outputs back in text order."""

    executor: object
    encode: Callable[[list[str]], dict[str, np.ndarray]]

    def outputs(self, texts: Sequence[str], batch_size: int = BATCH_SIZE) -> np.ndarray:
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        chunks = []
        for k in range(0, len(order), batch_size):
            idx = order[k:k + batch_size]
            feeds = self.encode([texts[i] for i in idx])
            chunks.append((idx, np.asarray(self.executor.infer(feeds)[0], dtype=np.float32)))
        width = chunks[0][1].shape[1]
        out = np.empty((len(texts), width), dtype=np.float32)
        for idx, values in chunks:
            out[idx] = values
        return out


def run_deployment(
    spec: DeploymentSpec,
    precisions: Sequence[str] = VARIANT_PRECISIONS,
    *,
    samples: int | None = None,
    force: bool = False,
) -> DeploymentReport:
    """Export (cached), make each precision's graph (cached), run the FP32 reference and each
    variant on the real and stress texts, and evaluate each variant's gate (not raised here:
    see :func:`~trtserve_build.stages.fidelity.raise_for`). The windowed tasks run their served
    path instead (:func:`run_windowed_deployment`)."""
    if spec.windows is not None:
        return run_windowed_deployment(spec, precisions, samples=samples, force=force)
    manifest = export(spec)
    encode = spec_encoder(spec)
    sets = eval_sets(spec, samples)
    fp32_path = export_dir(spec) / ONNX_FILE
    reference, _ = choose_executor(fp32_path, allow_tensorrt=False)
    if not isinstance(reference, OrtExecutor):  # FP32 under ORT is exact: it must be available
        raise ExecutorUnavailableError(f"{spec.name}: the FP32 reference must run under ONNX Runtime")
    ref_runner = Runner(reference, encode)
    ref_out = {s.name: ref_runner.outputs(s.texts) for s in sets}
    ref_acc = {s.name: accuracy(ref_out[s.name], s.labels) for s in sets}
    rows: list[Row] = []
    executors: dict[str, dict] = {"fp32": {"executor": reference.label, "refused": []}}
    for s in sets:
        rows.append(Row(spec.name, "fp32", s.name, reference.label, len(s.texts), 1.0, 1.0, 0.0,
                        float(1.0 - np.isfinite(ref_out[s.name]).all(axis=1).mean()), 1.0,
                        ref_acc[s.name], ref_acc[s.name], 0.0 if ref_acc[s.name] is not None else None, 1.0))
    gates = []
    for precision in precisions:
        path = precision_graph(spec, precision, force=force)
        executor, refused = choose_executor(path, plan_path(spec, precision), precision=precision)
        executors[precision] = {"executor": executor.label, "refused": refused}
        runner = Runner(executor, encode)
        mine = []
        for s in sets:
            started = time.perf_counter()
            out = runner.outputs(s.texts)
            m = compare(ref_out[s.name], out, manifest.task)
            acc = accuracy(out, s.labels)
            drop = None if acc is None else round((ref_acc[s.name] - acc) * 100, 4)
            mine.append(Row(spec.name, precision, s.name, executor.label, len(s.texts), accuracy=acc,
                            reference_accuracy=ref_acc[s.name], accuracy_drop_points=drop,
                            seconds=round(time.perf_counter() - started, 2), **m))
        executor.close()
        rows += mine
        gates.append(evaluate_gate(spec.name, precision, mine, spec.precision.gate(precision)))
    reference.close()
    return DeploymentReport(spec.name, manifest.task, reference.label, rows, executors, gates)


def run_windowed_deployment(
    spec: DeploymentSpec,
    precisions: Sequence[str] = VARIANT_PRECISIONS,
    *,
    samples: int | None = None,
    force: bool = False,
) -> DeploymentReport:
    """Question answering / token classification: the real items through the served windowed
    tokenizer and postprocess, FP32 (ONNX Runtime) against each precision's graph; one ``real``
    row per precision with the task metric (answer / entity agreement) and the raw-logit numbers.
    The first ``samples`` items (default: the spec's ``fidelity_samples``) of at most
    :data:`~trtserve_build.data.texts.WINDOWED_EVAL_ITEMS`."""
    manifest = export(spec)
    runner = WindowedRunner(spec)
    items = windowed_eval_items(spec.task, samples or spec.precision.fidelity_samples)
    requests = runner.requests(items)
    reference, _ = choose_executor(export_dir(spec) / ONNX_FILE, allow_tensorrt=False)
    if not isinstance(reference, OrtExecutor):  # FP32 under ORT is exact: it must be available
        raise ExecutorUnavailableError(f"{spec.name}: the FP32 reference must run under ONNX Runtime")
    ref = runner.run(reference, requests)
    rows = [windowed_row(spec, "fp32", reference.label, len(items), ref, ref)]
    executors: dict[str, dict] = {"fp32": {"executor": reference.label, "refused": []}}
    gates = []
    for precision in precisions:
        path = precision_graph(spec, precision, force=force)
        executor, refused = choose_executor(path, plan_path(spec, precision), precision=precision)
        executors[precision] = {"executor": executor.label, "refused": refused}
        row = windowed_row(spec, precision, executor.label, len(items), ref, runner.run(executor, requests))
        executor.close()
        log.info("%s", row_line(row))
        rows.append(row)
        gates.append(evaluate_gate(spec.name, precision, [row], spec.precision.gate(precision)))
    reference.close()
    return DeploymentReport(spec.name, manifest.task, reference.label, rows, executors, gates)


def gate_after_build(spec: DeploymentSpec, precision: str, *, force: bool = False) -> list[Row]:
    """Run the fidelity report for one freshly built precision and raise if its gate fails.

    Cached as ``<export dir>/<precision>.fidelity.json``, keyed by the graph's sha256 and the
    gate settings, so an unchanged build does not re-run it.
    """
    key = {
        "onnx_sha256": sha256_file(precision_onnx_path(spec, precision)),
        "gate": asdict(spec.precision.gate(precision)),
        "samples": spec.precision.fidelity_samples,
        "schema": REPORT_SCHEMA,
    }
    cache = fidelity_cache_path(spec, precision)
    cached = None if force else read_json(cache)
    if cached is not None and cached.get("key") == key and cached.get("passed"):
        log.info("%s/%s: fidelity gate passed before for this graph (%s)", spec.name, precision, cache)
        return [Row(**r) for r in cached["rows"]]
    report = run_deployment(spec, (precision,))
    write_text_atomic(cache, json.dumps({
        "key": key, "passed": all(g.passed for g in report.gates),
        "rows": [asdict(r) for r in report.rows], "gates": [asdict(g) for g in report.gates],
    }, indent=2) + "\n")
    for r in report.rows:
        log.info("%s", row_line(r))
    raise_for(report.gates)
    return report.rows
