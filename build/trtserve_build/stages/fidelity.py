"""Fidelity stage: the metrics, gates and report files of every precision variant against the
FP32 reference on real text (running the executors: :mod:`trtserve_build.pipeline.validate`).

For each deployment and precision (fp16, hybrid, int8) the FP32 export and the variant run on

* ``real``: held-out texts of the deployment's dataset (never the calibration texts), and
* ``stress``: long, repetitive and unusual texts (:func:`trtserve_build.data.texts.stress_texts`), where FP16 overflow
  shows first (random token ids underestimate it),

tokenized exactly as the served tokenizer does (length buckets). Per row: cosine similarity
of the outputs (mean, min), max absolute error, the share of outputs holding NaN/Inf, top-1
agreement (argmax; nearest neighbour for embeddings) and, for classifiers, held-out accuracy.
Question answering and token classification (the windowed tasks) run the served windowed path
instead (:mod:`trtserve_build.pipeline.windowed`): the shipped QA pairs and NER texts of the
exactness tests, one engine row per window, the served postprocess. Their task metric against
FP32: answer agreement (share of questions whose (START, END) equals FP32's, and the largest
|SCORE| difference; the gate also counts "pool ties": answers that differ only through the
served scoring's per-window span cut, i.e. agree when both rank a wider pool of spans) and
entity agreement (share of texts whose entity list, as (group, start, end), equals FP32's, and
entity-level F1 against FP32); beside it the raw per-token logits' cosine (per window, over its
tokens), max abs error and NaN/Inf share.

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
3. ``torch-interpreter``: :class:`trtserve_build.runtime.interpreter.TorchInterpreter` executes the ONNX graph node by node
   with PyTorch, on the GPU when there is one. Every op whose result is FP16 computes in FP32
   and rounds its result to FP16 (FP16 storage, FP32 accumulation: what FP16 GPU kernels and
   TensorRT do), so overflow to inf and FP16 rounding happen where they would on the GPU.
   Q/DQ are exact (round half to even, saturate).

Usage (``make validate``)::

    trtserve-build validate deployments/sentiment.toml deployments/embed.toml
"""
from __future__ import annotations

import datetime as _dt
import json
import math
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import trtserve_contract as contract
from trtserve_backend.parameters import PostprocessParameters
from trtserve_backend.steps import make_step_postprocess

from ..core.enums import TRANSFORMED_PRECISIONS
from ..core.errors import NonFiniteOutputError, ToleranceError
from ..core.host import machine_info
from ..core.metrics import cosine_rows
from ..core.spec import GateSpec

VARIANT_PRECISIONS = TRANSFORMED_PRECISIONS
REPORT_SCHEMA = 2  # 2: QA rows count pool ties


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
    #: windowed tasks: encoder rows (windows) of the ``texts`` items
    windows: int | None = None
    #: windowed tasks: share of items whose answer (QA) or entity list (NER) equals FP32's
    task_agreement: float | None = None
    #: QA: largest |SCORE - FP32 SCORE| over the questions
    max_score_diff: float | None = None
    #: NER: entity-level F1 against FP32's entities
    entity_f1: float | None = None
    #: QA: questions whose answer differs from FP32's but agrees with a wider span pool (gated as agreeing)
    pool_ties: int | None = None

    @property
    def answers_agreeing(self) -> float | None:
        """QA: the share the answer gate reads, answers equal to FP32's plus pool ties."""
        tied = (self.pool_ties or 0) / max(self.texts, 1)
        return None if self.task_agreement is None else self.task_agreement + tied


def top1(outputs: np.ndarray, task: str) -> np.ndarray:
    """argmax for classifiers; for embeddings the index of the nearest other output (cosine)."""
    if task == contract.CLASSIFICATION:
        return np.argmax(outputs, axis=1)
    x = outputs.astype(np.float64)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-30)
    sim = x @ x.T
    np.fill_diagonal(sim, -np.inf)
    return np.argmax(sim, axis=1)


def public_outputs(raw: np.ndarray, task: str, labels: Sequence[str] = ()) -> np.ndarray:
    """What clients receive from the ensemble, computed by the served postprocess itself
    (:func:`trtserve_backend.steps.make_step_postprocess`): the probabilities for classifiers,
    the L2-normalised embedding otherwise."""
    labels = tuple(labels) or tuple(f"label{i}" for i in range(raw.shape[1]))
    postprocess = make_step_postprocess(PostprocessParameters(task, labels if task == contract.CLASSIFICATION else ()))
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        outputs = postprocess(raw)
    name = contract.PROBABILITIES if task == contract.CLASSIFICATION else contract.EMBEDDING
    return outputs[name]


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


# ---- the windowed tasks' metrics -------------------------------------------------------

#: A QA answer as the served outputs give it: (START, END, SCORE).
Answer = tuple[int, int, float]


def answer_agreement(reference: Sequence[Answer], candidate: Sequence[Answer],
                     reference_pooled: Sequence[tuple[int, int]] | None = None,
                     candidate_pooled: Sequence[tuple[int, int]] | None = None) -> dict:
    """Share of questions whose (START, END) equals the reference's, the largest |SCORE| difference
    (non-finite scores count as infinitely far) and, given both sides' (START, END) with a wider
    span pool, the pool ties: questions whose answers differ but whose wide-pool answers agree."""
    if len(reference) != len(candidate):
        raise ValueError(f"{len(candidate)} answers against {len(reference)} reference answers")
    if not reference:
        return {"task_agreement": None, "max_score_diff": None, "pool_ties": None}
    same = [(r[0], r[1]) == (c[0], c[1]) for r, c in zip(reference, candidate)]
    diffs = [abs(float(r[2]) - float(c[2])) for r, c in zip(reference, candidate)]
    diffs = [d if math.isfinite(d) else math.inf for d in diffs]
    ties = None if reference_pooled is None or candidate_pooled is None else sum(
        not s and tuple(rp) == tuple(cp) for s, rp, cp in zip(same, reference_pooled, candidate_pooled))
    return {"task_agreement": sum(same) / len(same), "max_score_diff": max(diffs), "pool_ties": ties}


def entity_key(entity: dict) -> tuple:
    """What an entity is, scores aside: (group or tag, start, end)."""
    group = entity.get("entity_group", entity.get("entity"))
    return group, entity["start"], entity["end"]


def entity_agreement(reference: Sequence[Sequence[dict]], candidate: Sequence[Sequence[dict]]) -> dict:
    """Share of texts whose entity list (as :func:`entity_key`, in order) equals the reference's,
    and entity-level F1 of all candidate entities against the reference's (micro, exact match of
    group, start and end; 1.0 when neither side has an entity)."""
    if len(reference) != len(candidate):
        raise ValueError(f"{len(candidate)} entity lists against {len(reference)} reference lists")
    if not reference:
        return {"task_agreement": None, "entity_f1": None}
    same = found = wanted = hit = 0
    for ref, cand in zip(reference, candidate):
        rk, ck = [entity_key(e) for e in ref], [entity_key(e) for e in cand]
        same += rk == ck
        found, wanted = found + len(ck), wanted + len(rk)
        hit += sum((Counter(rk) & Counter(ck)).values())
    f1 = 1.0 if found == wanted == 0 else 2 * hit / (found + wanted)
    return {"task_agreement": same / len(reference), "entity_f1": f1}


def compare_token_logits(reference: Sequence[np.ndarray], candidate: Sequence[np.ndarray]) -> dict:
    """Raw-output metrics of the windowed tasks: each window's per-token logits ``[tokens, c]``
    (its real tokens only) flattened to one vector; cosine per window (mean, min), max abs error
    and the share of windows holding NaN/Inf."""
    if len(reference) != len(candidate):
        raise ValueError(f"{len(candidate)} windows against {len(reference)} reference windows")
    ref = [np.asarray(r, dtype=np.float64).reshape(-1) for r in reference]
    cand = [np.asarray(c, dtype=np.float64).reshape(-1) for c in candidate]
    finite = np.array([np.isfinite(c).all() for c in cand], dtype=bool)
    out: dict = {"nonfinite_fraction": float(1.0 - finite.mean()) if len(finite) else 0.0,
                 "cosine_mean": None, "cosine_min": None, "max_abs_error": None, "raw_cosine_min": None}
    if finite.any():
        cos = np.array([cosine_rows(r[None, :], c[None, :])[0] for r, c, f in zip(ref, cand, finite) if f])
        err = max(float(np.abs(r - c).max(initial=0.0)) for r, c, f in zip(ref, cand, finite) if f)
        out.update(cosine_mean=float(cos.mean()), cosine_min=float(cos.min()), max_abs_error=err,
                   raw_cosine_min=float(cos.min()))
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
        if gate.min_answer_agreement is not None and r.max_score_diff is not None and r.answers_agreeing is not None \
                and r.answers_agreeing < gate.min_answer_agreement:
            failures.append(f"{where}: {r.answers_agreeing:.2%} of {r.texts} answers agree with FP32's "
                            f"< {gate.min_answer_agreement:.2%} (min_answer_agreement; {r.task_agreement:.2%} equal, "
                            f"{r.pool_ties or 0} pool tie(s); max |SCORE diff| {_fmt(r.max_score_diff, 4)})")
        if gate.min_entity_f1 is not None and r.entity_f1 is not None and r.entity_f1 < gate.min_entity_f1:
            failures.append(f"{where}: entity F1 {r.entity_f1:.4f} against FP32 < {gate.min_entity_f1} "
                            f"(min_entity_f1; {_fmt(r.task_agreement, 4)} of {r.texts} entity lists equal FP32's)")
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


@dataclass
class DeploymentReport:
    model: str
    task: str
    reference_executor: str
    rows: list[Row]
    executors: dict[str, dict]
    gates: list[GateResult]


def accuracy(outputs: np.ndarray, labels: list[int] | None) -> float | None:
    if labels is None:
        return None
    pred = np.argmax(np.where(np.isfinite(outputs), outputs, -np.inf), axis=1)
    return float((pred == np.asarray(labels)).mean())


def row_line(r: Row) -> str:
    acc = "" if r.accuracy is None else f" acc {r.accuracy:.4f} (drop {r.accuracy_drop_points:.2f} pt)"
    if r.windows is not None:
        task = (f" entities agree {_fmt(r.task_agreement, 4)} F1 {_fmt(r.entity_f1, 4)}" if r.entity_f1 is not None
                else f" answers agree {_fmt(r.task_agreement, 4)}{_ties(r)} max|dSCORE| {_fmt(r.max_score_diff, 4)}")
        return (f"{r.model}/{r.precision}/{r.set}: {r.texts} items, {r.windows} windows:{task}; logits cos mean "
                f"{_fmt(r.cosine_mean, 6)} min {_fmt(r.cosine_min, 6)} max|err| {_fmt(r.max_abs_error, 4)}"
                f" nonfinite {r.nonfinite_fraction:.2%} [{r.executor}]")
    return (f"{r.model}/{r.precision}/{r.set}: cos mean {_fmt(r.cosine_mean, 6)} min {_fmt(r.cosine_min, 6)}"
            f" max|err| {_fmt(r.max_abs_error, 4)} nonfinite {r.nonfinite_fraction:.2%}"
            f" top1 {_fmt(r.top1_agreement, 4)}{acc} [{r.executor}]")


# =======================================================================================
# Report files
# =======================================================================================
def to_markdown(reports: Sequence[DeploymentReport], machine: dict) -> str:
    lines = [
        "| model | precision | set | texts | cosine mean | cosine min | max abs err | NaN/Inf | top-1 agree | accuracy (drop) | gate | executor |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for rep in reports:
        verdict = {g.precision: ("pass" if g.passed else "**FAIL**") for g in rep.gates}
        for r in rep.rows:
            if r.windows is not None:
                continue  # the windowed tasks' table below
            change = 0.0 if r.accuracy_drop_points is None else -r.accuracy_drop_points + 0.0  # no "-0.00"
            acc = "" if r.accuracy is None else f"{r.accuracy:.2%}" + (
                "" if r.precision == "fp32" else f" ({change:+.2f} pt)")
            lines.append(
                f"| {r.model} | {r.precision} | {r.set} | {r.texts} | {_fmt(r.cosine_mean, 6)} | "
                f"{_fmt(r.cosine_min, 6)} | {_fmt(r.max_abs_error, 4)} | {r.nonfinite_fraction:.1%} | "
                f"{_fmt(r.top1_agreement, 3)} | {acc} | {verdict.get(r.precision, 'reference')} | {r.executor} |"
            )
    lines += windowed_table(reports)
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


def windowed_table(reports: Sequence[DeploymentReport]) -> list[str]:
    """The question-answering / token-classification rows: the task metric against FP32 first."""
    rows = [(rep, r) for rep in reports for r in rep.rows if r.windows is not None]
    if not rows:
        return []
    lines = [
        "",
        "Question answering and token classification (served windows and postprocess; agreement with FP32):",
        "",
        "| model | precision | set | items | windows | answers / entity lists = FP32 | max abs SCORE diff | "
        "entity F1 vs FP32 | logits cosine mean | logits cosine min | max abs err | NaN/Inf | gate | executor |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for rep, r in rows:
        verdict = {g.precision: ("pass" if g.passed else "**FAIL**") for g in rep.gates}
        lines.append(
            f"| {r.model} | {r.precision} | {r.set} | {r.texts} | {r.windows} | "
            f"{'n/a' if r.task_agreement is None else f'{r.task_agreement:.2%}'}{_ties(r)} | "
            f"{_fmt(r.max_score_diff, 4)} | "
            f"{_fmt(r.entity_f1, 4)} | {_fmt(r.cosine_mean, 6)} | {_fmt(r.cosine_min, 6)} | "
            f"{_fmt(r.max_abs_error, 4)} | {r.nonfinite_fraction:.1%} | {verdict.get(r.precision, 'reference')} | "
            f"{r.executor} |")
    return lines


def _ties(r: Row) -> str:
    return f" (+{r.pool_ties} pool tie{'s' * (r.pool_ties > 1)})" if r.pool_ties else ""


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
