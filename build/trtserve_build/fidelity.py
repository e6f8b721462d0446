"""Fidelity report: every precision variant against the FP32 reference, on real text, with gates.

For each deployment and precision (fp16, hybrid, int8) the FP32 export and the variant run on

* ``real``: held-out texts of the deployment's dataset (never the calibration texts), and
* ``stress``: long, repetitive and unusual texts (:func:`stress_texts`), where FP16 overflow
  shows first (random token ids underestimate it),

tokenized exactly as the served tokenizer does (length buckets). Per row: cosine similarity
of the outputs (mean, min), max absolute error, the share of outputs holding NaN/Inf, top-1
agreement (argmax; nearest neighbour for embeddings) and, for classifiers, held-out accuracy.
Gates per precision come from the spec (``[precision.gates.<precision>]``, defaults in
``spec.DEFAULT_GATES``); a failed gate raises :class:`NonFiniteOutputError` or
:class:`ToleranceError` with the numbers.

Executors, best first (each row names the one that produced it, and why better ones were not
used):

1. ``tensorrt``: the built plan, where a TensorRT runtime and a GPU that runs the plan exist.
2. ``onnxruntime-cpu``: only where ONNX Runtime has kernels for every op *in the graph's
   types*. ORT 1.31's CPU provider has no FP16 MatMul/Add/Mul/Softmax/Erf kernels: it
   silently inserts casts and computes those in FP32, dropping the FP16 rounding between
   them, so an FP16 overflow never happens there (``x*1000*1000*1e-4`` gives 100, not inf).
   The probe detects those inserted casts and refuses such graphs.
3. ``torch-interpreter``: :class:`.onnx_interpreter.TorchInterpreter` executes the ONNX graph node by node
   with PyTorch, on the GPU when there is one. Every op whose result is FP16 computes in FP32
   and rounds its result to FP16 (FP16 storage, FP32 accumulation: what FP16 GPU kernels and
   TensorRT do), so overflow to inf and FP16 rounding happen where they would on the GPU.
   Q/DQ are exact (round half to even, saturate).

Usage (``make validate``)::

    python -m trtserve_build.fidelity deployments/sentiment.toml deployments/embed.toml
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import logging
import math
import platform
import socket
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .fidelity_errors import ExecutorUnavailableError, FidelityError, NonFiniteOutputError, ToleranceError  # noqa: F401
from .host import cpu_model
from .onnx_interpreter import TorchInterpreter
from .spec import REPO_ROOT, DeploymentSpec, GateSpec, SpecError, load_spec

log = logging.getLogger(__name__)

VARIANT_PRECISIONS = ("fp16", "hybrid", "int8")
REPORT_SCHEMA = 1
DEFAULT_OUTPUT = REPO_ROOT / "results" / "fidelity.json"
BATCH_SIZE = 32


# =======================================================================================
# Executors
# =======================================================================================
class OrtExecutor:
    """ONNX Runtime on the CPU; refuses graphs it would silently compute in other types."""

    name = "onnxruntime-cpu"

    def __init__(self, onnx_path: Path, intra_op_threads: int = 0) -> None:
        import onnxruntime as ort

        upcast = ort_upcast_ops(onnx_path)
        if upcast:
            listed = ", ".join(f"{op}x{n}" for op, n in sorted(upcast.items()))
            raise ExecutorUnavailableError(
                f"{self.name}: no kernels in the graph's types for {sum(upcast.values())} node input(s) "
                f"({listed}); ONNX Runtime would run them in FP32 and skip the FP16 rounding"
            )
        options = ort.SessionOptions()
        if intra_op_threads:
            options.intra_op_num_threads = intra_op_threads
        self.session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.label = f"{self.name} {ort.__version__}"

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.session.run(None, {n: feeds[n] for n in self.inputs})


def ort_upcast_ops(onnx_path: Path) -> Counter:
    """Op types (with counts) whose inputs ONNX Runtime's CPU provider casts to another type
    because it has no kernel for the graph's type (its ``InsertedPrecisionFreeCast_`` nodes)."""
    import tempfile

    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="ort-probe-") as tmp:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        options.optimized_model_filepath = str(Path(tmp) / "probe.onnx")
        options.log_severity_level = 3
        ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        probed = onnx.load(options.optimized_model_filepath, load_external_data=False)
    inserted = {n.output[0] for n in probed.graph.node if n.name.startswith("InsertedPrecisionFreeCast_")}
    return Counter(n.op_type for n in probed.graph.node for x in n.input if x in inserted)


class TensorRTExecutor:
    """A built plan under TensorRT (via Polygraphy), where a runtime and a GPU can run it.

    Not exercised on the project machines: the GPU machine has no TensorRT, and TensorRT-RTX
    plans do not run on Hopper; the probe says so and the next executor is used.
    """

    name = "tensorrt"

    def __init__(self, plan_path: Path | None) -> None:
        if plan_path is None or not Path(plan_path).is_file():
            raise ExecutorUnavailableError(f"{self.name}: no plan built for this variant (make engines VARIANT=gpu)")
        try:
            import torch
        except ImportError as e:
            raise ExecutorUnavailableError(f"{self.name}: torch missing ({e})") from e
        if not torch.cuda.is_available():
            raise ExecutorUnavailableError(f"{self.name}: no CUDA device here")
        from .engine_trt import TensorRTUnavailableError, detect_tensorrt

        try:
            flavour = detect_tensorrt()
        except TensorRTUnavailableError as e:
            raise ExecutorUnavailableError(f"{self.name}: {e}") from e
        if flavour.is_rtx:
            import os

            os.environ["POLYGRAPHY_USE_TENSORRT_RTX"] = "1"
        try:
            from polygraphy.backend.trt import EngineFromBytes, TrtRunner

            self.runner = TrtRunner(EngineFromBytes(Path(plan_path).read_bytes()))
            self.runner.activate()
        except Exception as e:  # noqa: BLE001 - any deserialization failure: not runnable here
            raise ExecutorUnavailableError(f"{self.name}: cannot run {plan_path} here: {e}") from e
        self.label = f"{flavour.name} {flavour.version} ({torch.cuda.get_device_name()})"

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        out = self.runner.infer(feeds)
        return [np.asarray(v) for v in out.values()]


def choose_executor(
    onnx_path: Path, plan_path: Path | None = None, *, precision: str | None = None, allow_tensorrt: bool = True
):
    """The best executor that runs ``onnx_path`` faithfully: ``(executor, refusals)``.

    A plan is used only when its build record says it was built from this very graph.
    """
    import onnx

    refusals: list[str] = []
    if allow_tensorrt:
        try:
            if plan_path is not None and Path(plan_path).is_file() and precision is not None:
                from .engine_trt import is_plan_current

                if not is_plan_current(plan_path, onnx_path, precision):
                    raise ExecutorUnavailableError(f"tensorrt: {plan_path} was not built from {onnx_path.name} (stale)")
            return TensorRTExecutor(plan_path), refusals
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


# =======================================================================================
# Texts
# =======================================================================================
def stress_texts(corpus: Sequence[str]) -> list[str]:
    """Long, repetitive and unusual inputs (fixed; built from ``corpus`` sentences)."""
    joined = " ".join(corpus[:200])
    return [
        joined,                                   # far beyond every bucket: truncated
        " ".join(corpus[200:260]),
        "the " * 600,
        "great great great great " * 150,
        "terrible! " * 300,
        "!" * 2000,
        "a" * 3000,
        "ha" * 1500,
        "lol " * 500,
        "no. " * 400,
        "A GRIPPING, BEAUTIFULLY ACTED FILM!!! " * 40,
        "0123456789 " * 200,
        "3.14159265358979323846264338327950288419716939937510 " * 20,
        "https://example.com/path?query=1&x=2#frag " * 40,
        "def f(x):\n    return x ** 2  # comment\n" * 40,
        "<div class='review'><p>Great &amp; moving</p></div>" * 30,
        "😀🎬🍿🔥💯" * 200,
        "これは素晴らしい映画です。" * 60,
        "Очень скучный фильм, но актёры хорошие. " * 40,
        "هذا فيلم رائع جدا " * 60,
        "¡Qué película tan buena! ¿Verdad? " * 40,
        "zero\u200bwidth\u200bjoiners\u200b" * 150,
        "tab\tseparated\tvalues\t" * 150,
        "\n".join(["line"] * 500),
        "supercalifragilisticexpialidocious" * 60,
        "[CLS] [SEP] [PAD] [MASK] [UNK] " * 80,
        "# " * 800,
        "x",
        "",
        "   ",
        "?",
        "ok",
    ]


@dataclass
class EvalSet:
    name: str
    texts: list[str]
    labels: list[int] | None = None


def eval_sets(spec: DeploymentSpec, samples: int | None = None) -> list[EvalSet]:
    """``real`` (held-out texts of the spec's dataset, with labels when they are the model's)
    and ``stress``."""
    from .calibration import dataset_split
    from .data import dataset_labels

    dataset = spec.training.dataset if spec.training else spec.precision.calibration_dataset
    train, holdout = dataset_split(spec, dataset)
    n = samples or spec.precision.fidelity_samples
    rows = holdout[:n]
    labelled = tuple(spec.model.labels) == tuple(dataset_labels(dataset)) and bool(spec.model.labels)
    real = EvalSet("real", [r.text for r in rows], [r.label for r in rows] if labelled else None)
    return [real, EvalSet("stress", stress_texts([r.text for r in train]))]


# =======================================================================================
# Metrics and gates
# =======================================================================================
@dataclass
class Row:
    """One (model, precision, text set) line of the report."""

    model: str
    precision: str
    set: str
    executor: str
    texts: int
    cosine_mean: float | None
    cosine_min: float | None
    max_abs_error: float | None
    nonfinite_fraction: float
    top1_agreement: float | None
    accuracy: float | None = None
    reference_accuracy: float | None = None
    accuracy_drop_points: float | None = None
    #: min cosine of the raw encoder outputs (logits / pooled), for the record
    raw_cosine_min: float | None = None
    seconds: float = 0.0


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    cos = (a * b).sum(axis=1) / np.maximum(na * nb, 1e-30)
    both_zero = (na == 0) & (nb == 0)
    return np.where(both_zero, 1.0, cos)


def top1(outputs: np.ndarray, task: str) -> np.ndarray:
    """argmax for classifiers; for embeddings the index of the nearest other output (cosine)."""
    from trtserve_backend import contract

    if task == contract.CLASSIFICATION:
        return np.argmax(outputs, axis=1)
    x = outputs.astype(np.float64)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-30)
    sim = x @ x.T
    np.fill_diagonal(sim, -np.inf)
    return np.argmax(sim, axis=1)


def public_outputs(raw: np.ndarray, task: str) -> np.ndarray:
    """What clients receive from the ensemble: softmax probabilities for classifiers, the
    L2-normalised embedding otherwise (the postprocess model's computation, in float64)."""
    from trtserve_backend import contract

    x = raw.astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        if task == contract.CLASSIFICATION:
            e = np.exp(x - np.max(x, axis=1, keepdims=True))
            return e / e.sum(axis=1, keepdims=True)
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def compare(reference: np.ndarray, candidate: np.ndarray, task: str) -> dict:
    """Row metrics of the encoder output ``candidate`` against ``reference`` (both ``[n, d]``).

    Cosine and max abs error are taken on the ensemble's public outputs
    (:func:`public_outputs`): the cosine of raw 2-way logits is ill-conditioned near the
    decision boundary (logits near zero: a 0.003 error turns by degrees), the probabilities
    are not. ``raw_cosine_min`` keeps the raw-output number for the record.
    """
    raw_finite = np.isfinite(candidate).all(axis=1)
    raw_min = float(cosine_rows(reference[raw_finite], candidate[raw_finite]).min()) if raw_finite.any() else None
    reference, candidate = public_outputs(reference, task), public_outputs(candidate, task)
    finite = np.isfinite(candidate).all(axis=1) & raw_finite
    out: dict = {"nonfinite_fraction": float(1.0 - finite.mean()) if len(finite) else 0.0}
    if finite.any():
        cos = cosine_rows(reference[finite], candidate[finite])
        out["cosine_mean"] = float(cos.mean())
        out["cosine_min"] = float(cos.min())
        out["max_abs_error"] = float(np.abs(reference[finite].astype(np.float64) - candidate[finite]).max())
    else:
        out.update(cosine_mean=None, cosine_min=None, max_abs_error=None)
    safe = np.where(np.isfinite(candidate), candidate, 0.0)
    out["top1_agreement"] = float((top1(reference, task) == top1(safe, task)).mean()) if len(reference) > 1 else None
    out["raw_cosine_min"] = raw_min
    return out


@dataclass
class GateResult:
    precision: str
    model: str
    passed: bool
    failures: list[str] = field(default_factory=list)
    nonfinite: bool = False


def evaluate_gate(model: str, precision: str, rows: Sequence[Row], gate: GateSpec) -> GateResult:
    """Check ``gate`` over every row of one (model, precision); failures carry the numbers."""
    failures, nonfinite = [], False
    for r in rows:
        where = f"{model}/{precision}/{r.set}"
        if gate.max_nonfinite_fraction is not None and r.nonfinite_fraction > gate.max_nonfinite_fraction:
            nonfinite = True
            failures.append(f"{where}: {r.nonfinite_fraction:.2%} of {r.texts} outputs hold NaN/Inf "
                            f"(allowed {gate.max_nonfinite_fraction:.2%})")
        if gate.min_cosine is not None and (r.cosine_min is None or r.cosine_min < gate.min_cosine):
            failures.append(f"{where}: min cosine {_fmt(r.cosine_min, 6)} < {gate.min_cosine} "
                            f"(mean {_fmt(r.cosine_mean, 6)}, max |err| {_fmt(r.max_abs_error, 3)})")
        if gate.min_top1_agreement is not None and r.top1_agreement is not None and r.top1_agreement < gate.min_top1_agreement:
            failures.append(f"{where}: top-1 agreement {r.top1_agreement:.4f} < {gate.min_top1_agreement}")
        if gate.max_accuracy_drop_points is not None and r.accuracy_drop_points is not None \
                and r.accuracy_drop_points > gate.max_accuracy_drop_points:
            failures.append(f"{where}: accuracy {r.accuracy:.4f} vs FP32 {r.reference_accuracy:.4f}: drop "
                            f"{r.accuracy_drop_points:.2f} points > {gate.max_accuracy_drop_points}")
    return GateResult(precision, model, not failures, failures, nonfinite)


def raise_for(results: Sequence[GateResult]) -> None:
    """Raise :class:`NonFiniteOutputError` (any NaN/Inf failure) or :class:`ToleranceError`."""
    failed = [r for r in results if not r.passed]
    if not failed:
        return
    lines = [f for r in failed for f in r.failures]
    cls = NonFiniteOutputError if any(r.nonfinite for r in failed) else ToleranceError
    raise cls(f"fidelity gate failed for {len(failed)} variant(s):\n  " + "\n  ".join(lines))


def _fmt(v, digits: int) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


# =======================================================================================
# Running one deployment
# =======================================================================================
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
            chunks.append((idx, np.asarray(self.executor.run(feeds)[0], dtype=np.float32)))
        width = chunks[0][1].shape[1]
        out = np.empty((len(texts), width), dtype=np.float32)
        for idx, values in chunks:
            out[idx] = values
        return out


def spec_encoder(spec: DeploymentSpec) -> Callable[[list[str]], dict[str, np.ndarray]]:
    """Tokenize like the served ``<name>_tokenizer`` (same tokenizer.json, buckets, padding)."""
    from trtserve_backend.tokenize import BucketTokenizer

    from .export import TOKENIZER_FILE, ExportManifest, export_dir

    manifest = ExportManifest.read(export_dir(spec))
    tok = BucketTokenizer.from_file(
        str(export_dir(spec) / TOKENIZER_FILE), spec.model.max_sequence_length, spec.model.length_buckets,
        manifest.pad_token_id, manifest.inputs,
    )
    return tok.encode


@dataclass
class DeploymentReport:
    model: str
    task: str
    reference_executor: str
    rows: list[Row]
    executors: dict[str, dict]
    gates: list[GateResult]


def run_deployment(
    spec: DeploymentSpec,
    precisions: Sequence[str] = VARIANT_PRECISIONS,
    *,
    samples: int | None = None,
    force: bool = False,
) -> DeploymentReport:
    """Export (cached), make each precision's graph (cached), run the FP32 reference and each
    variant on the real and stress texts, and evaluate each variant's gate (not raised here:
    see :func:`raise_for`)."""
    from .export import ONNX_FILE, export, export_dir
    from .pipeline import plan_path
    from .precision import ensure_precision_onnx

    manifest = export(spec)
    encode = spec_encoder(spec)
    sets = eval_sets(spec, samples)
    fp32_path = export_dir(spec) / ONNX_FILE
    reference, _ = choose_executor(fp32_path, allow_tensorrt=False)
    if not isinstance(reference, OrtExecutor):  # FP32 under ORT is exact: it must be available
        raise ExecutorUnavailableError(f"{spec.name}: the FP32 reference must run under ONNX Runtime")
    ref_runner = Runner(reference, encode)
    ref_out = {s.name: ref_runner.outputs(s.texts) for s in sets}
    ref_acc = {s.name: _accuracy(ref_out[s.name], s.labels) for s in sets}
    rows: list[Row] = []
    executors: dict[str, dict] = {"fp32": {"executor": reference.label, "refused": []}}
    for s in sets:
        rows.append(Row(spec.name, "fp32", s.name, reference.label, len(s.texts), 1.0, 1.0, 0.0,
                        float(1.0 - np.isfinite(ref_out[s.name]).all(axis=1).mean()), 1.0,
                        ref_acc[s.name], ref_acc[s.name], 0.0 if ref_acc[s.name] is not None else None, 1.0))
    gates = []
    for precision in precisions:
        path = ensure_precision_onnx(spec, precision, force=force)
        executor, refused = choose_executor(path, plan_path(spec, precision), precision=precision)
        executors[precision] = {"executor": executor.label, "refused": refused}
        runner = Runner(executor, encode)
        mine = []
        for s in sets:
            started = time.perf_counter()
            out = runner.outputs(s.texts)
            m = compare(ref_out[s.name], out, manifest.task)
            acc = _accuracy(out, s.labels)
            drop = None if acc is None else round((ref_acc[s.name] - acc) * 100, 4)
            mine.append(Row(spec.name, precision, s.name, executor.label, len(s.texts), accuracy=acc,
                            reference_accuracy=ref_acc[s.name], accuracy_drop_points=drop,
                            seconds=round(time.perf_counter() - started, 2), **m))
        rows += mine
        gates.append(evaluate_gate(spec.name, precision, mine, spec.precision.gate(precision)))
    return DeploymentReport(spec.name, manifest.task, reference.label, rows, executors, gates)


def _accuracy(outputs: np.ndarray, labels: list[int] | None) -> float | None:
    if labels is None:
        return None
    pred = np.argmax(np.where(np.isfinite(outputs), outputs, -np.inf), axis=1)
    return float((pred == np.asarray(labels)).mean())


# =======================================================================================
# The gate run after a build (cached per graph)
# =======================================================================================
def gate_after_build(spec: DeploymentSpec, precision: str, *, force: bool = False) -> list[Row]:
    """Run the fidelity report for one freshly built precision and raise if its gate fails.

    Cached as ``<export dir>/<precision>.fidelity.json``, keyed by the graph's sha256 and the
    gate settings, so an unchanged build does not re-run it.
    """
    from .export import export_dir, sha256_file
    from .precision import precision_onnx_path

    onnx_path = precision_onnx_path(spec, precision)
    key = {
        "onnx_sha256": sha256_file(onnx_path),
        "gate": asdict(spec.precision.gate(precision)),
        "samples": spec.precision.fidelity_samples,
        "schema": REPORT_SCHEMA,
    }
    cache = export_dir(spec) / f"{precision}.fidelity.json"
    if not force and cache.exists():
        data = json.loads(cache.read_text())
        if data.get("key") == key and data.get("passed"):
            log.info("%s/%s: fidelity gate passed before for this graph (%s)", spec.name, precision, cache)
            return [Row(**r) for r in data["rows"]]
    report = run_deployment(spec, (precision,))
    cache.write_text(json.dumps({
        "key": key, "passed": all(g.passed for g in report.gates),
        "rows": [asdict(r) for r in report.rows], "gates": [asdict(g) for g in report.gates],
    }, indent=2) + "\n")
    for r in report.rows:
        log.info("%s", _row_line(r))
    raise_for(report.gates)
    return report.rows


def _row_line(r: Row) -> str:
    acc = "" if r.accuracy is None else f" acc {r.accuracy:.4f} (drop {r.accuracy_drop_points:.2f} pt)"
    return (f"{r.model}/{r.precision}/{r.set}: cos mean {_fmt(r.cosine_mean, 6)} min {_fmt(r.cosine_min, 6)}"
            f" max|err| {_fmt(r.max_abs_error, 4)} nonfinite {r.nonfinite_fraction:.2%}"
            f" top1 {_fmt(r.top1_agreement, 4)}{acc} [{r.executor}]")


# =======================================================================================
# Report files
# =======================================================================================
def machine_info() -> dict:
    import onnxruntime

    info = {
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "processor": cpu_model() or platform.processor() or "unknown",
        "cpus": _cpu_count(),
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
    }
    try:
        import torch

        info["torch"] = torch.__version__
        info["gpu"] = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    except ImportError:
        pass
    return info


def _cpu_count() -> int:
    import os

    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def to_markdown(reports: Sequence[DeploymentReport], machine: dict) -> str:
    lines = [
        "| model | precision | set | texts | cosine mean | cosine min | max abs err | NaN/Inf | top-1 agree | accuracy (drop) | gate | executor |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for rep in reports:
        verdict = {g.precision: ("pass" if g.passed else "**FAIL**") for g in rep.gates}
        for r in rep.rows:
            change = 0.0 if r.accuracy_drop_points is None else -r.accuracy_drop_points + 0.0  # no "-0.00"
            acc = "" if r.accuracy is None else f"{r.accuracy:.2%}" + (
                "" if r.precision == "fp32" else f" ({change:+.2f} pt)")
            lines.append(
                f"| {r.model} | {r.precision} | {r.set} | {r.texts} | {_fmt(r.cosine_mean, 6)} | "
                f"{_fmt(r.cosine_min, 6)} | {_fmt(r.max_abs_error, 4)} | {r.nonfinite_fraction:.1%} | "
                f"{_fmt(r.top1_agreement, 3)} | {acc} | {verdict.get(r.precision, 'reference')} | {r.executor} |"
            )
    lines.append("")
    lines.append(f"Measured on {machine.get('processor')} ({machine.get('cpus')} CPUs"
                 f"{', ' + machine['gpu'] if machine.get('gpu') else ''}), {machine.get('created_utc', '')}.")
    refusals = sorted({f"- {p}: {why}" for rep in reports for p, e in rep.executors.items() for why in e["refused"]})
    if refusals:
        lines += ["", "Executors not used (why):", *refusals]
    failures = [f for rep in reports for g in rep.gates for f in g.failures]
    if failures:
        lines += ["", "Gate failures:", *[f"- {f}" for f in failures]]
    return "\n".join(lines) + "\n"


def write_report(reports: Sequence[DeploymentReport], json_path: Path, md_path: Path | None) -> dict:
    machine = machine_info()
    machine["created_utc"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    data = {
        "schema": REPORT_SCHEMA,
        "machine": machine,
        "deployments": [
            {"model": r.model, "task": r.task, "reference_executor": r.reference_executor,
             "executors": r.executors, "rows": [asdict(x) for x in r.rows], "gates": [asdict(g) for g in r.gates]}
            for r in reports
        ],
        "passed": all(g.passed for r in reports for g in r.gates),
    }
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(_finite(data), indent=2) + "\n")
    if md_path is not None:
        md_path.write_text(to_markdown(reports, machine))
    return data


def _finite(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m trtserve_build.fidelity", description=__doc__.split("\n")[0])
    ap.add_argument("specs", nargs="*", default=["deployments/sentiment.toml", "deployments/embed.toml"])
    ap.add_argument("--precision", action="append", choices=VARIANT_PRECISIONS, dest="precisions",
                    help="repeatable; default: fp16, hybrid and int8")
    ap.add_argument("--samples", type=int, help="held-out texts per model (default: the spec's fidelity_samples)")
    ap.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="JSON report (default results/fidelity.json)")
    ap.add_argument("--markdown", type=Path, help="markdown table (default: the JSON path with .md)")
    ap.add_argument("--no-gate", action="store_true", help="write the report, exit 0 even if a gate fails")
    ap.add_argument("--force", action="store_true", help="rebuild the precision graphs and calibration")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    precisions = tuple(args.precisions or VARIANT_PRECISIONS)
    try:
        specs = [load_spec(p) for p in args.specs]
        reports = []
        for spec in specs:
            rep = run_deployment(spec, precisions, samples=args.samples, force=args.force)
            for r in rep.rows:
                print(_row_line(r))
            reports.append(rep)
    except (SpecError, FidelityError) as e:
        print(f"fidelity: {e}", file=sys.stderr)
        return 2
    md = args.markdown or args.output.with_suffix(".md")
    data = write_report(reports, args.output, md)
    print(f"fidelity: wrote {args.output} and {md}")
    try:
        raise_for([g for r in reports for g in r.gates])
    except FidelityError as e:
        print(f"fidelity: {type(e).__name__}: {e}", file=sys.stderr)
        return 0 if args.no_gate else 1
    print(f"fidelity: all gates passed ({sum(len(r.gates) for r in reports)} variants)")
    return 0 if data["passed"] or args.no_gate else 1


if __name__ == "__main__":
    sys.exit(main())
