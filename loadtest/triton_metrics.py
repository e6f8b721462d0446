"""Triton's Prometheus metrics: scrape, parse, and the per-model breakdown of one time window.

Triton exports cumulative counters per model (``model``/``version`` labels); the difference of
two scrapes taken around a load test is that test's server-side view:

- requests: ``nv_inference_request_success`` (+ ``nv_inference_request_failure`` by reason,
  ``REJECTED`` being the bounded queue turning requests away);
- queue vs compute time per request: ``nv_inference_queue_duration_us`` against
  ``nv_inference_compute_{input,infer,output}_duration_us``, divided by successful requests;
- the batch the dynamic batcher achieved: ``nv_inference_count / nv_inference_exec_count``
  (inferences are batch rows, executions are model runs).

Only the standard library is used, so the parser also runs in the compose healthcheck image.
"""
from __future__ import annotations

import re
import time
import urllib.request
from collections import defaultdict
from dataclasses import asdict, dataclass

SUCCESS = "nv_inference_request_success"
FAILURE = "nv_inference_request_failure"
INFERENCES = "nv_inference_count"
EXECUTIONS = "nv_inference_exec_count"
REQUEST_US = "nv_inference_request_duration_us"
QUEUE_US = "nv_inference_queue_duration_us"
COMPUTE_INPUT_US = "nv_inference_compute_input_duration_us"
COMPUTE_INFER_US = "nv_inference_compute_infer_duration_us"
COMPUTE_OUTPUT_US = "nv_inference_compute_output_duration_us"
PENDING = "nv_inference_pending_request_count"
#: Every per-model metric the breakdown reads (the dashboard test checks Triton exports them).
MODEL_METRICS = (SUCCESS, FAILURE, INFERENCES, EXECUTIONS, REQUEST_US, QUEUE_US,
                 COMPUTE_INPUT_US, COMPUTE_INFER_US, COMPUTE_OUTPUT_US, PENDING)

# name{labels} value [timestamp]
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+\d+)?$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')

Labels = tuple[tuple[str, str], ...]


class MetricsError(RuntimeError):
    """The metrics endpoint could not be read or parsed."""


def parse_metrics(text: str) -> dict[str, dict[Labels, float]]:
    """Prometheus text exposition -> ``{name: {sorted label pairs: value}}`` (comments skipped)."""
    samples: dict[str, dict[Labels, float]] = defaultdict(dict)
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE.match(line)
        if not match:
            raise MetricsError(f"line {number} is not a Prometheus sample: {line[:120]!r}")
        name, raw_labels, raw_value = match.groups()
        labels = tuple(sorted(_LABEL.findall(raw_labels or "")))
        try:
            value = float(raw_value)
        except ValueError:
            raise MetricsError(f"line {number}: value {raw_value!r} is not a number") from None
        samples[name][labels] = value
    return dict(samples)


def fetch_text(url: str, timeout_s: float = 5.0) -> str:
    """The raw exposition text at ``url`` (e.g. ``http://127.0.0.1:8002/metrics``)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return response.read().decode("utf-8")
    except OSError as e:
        raise MetricsError(f"cannot read Triton metrics from {url}: {e}") from e


def scrape(url: str, timeout_s: float = 5.0) -> dict[str, dict[Labels, float]]:
    """GET ``url`` and parse it."""
    return parse_metrics(fetch_text(url, timeout_s))


def fetch_settled(url: str, settle_s: float = 0.5, max_s: float = 10.0, fetch=None) -> str:
    """The exposition text once every model's request counters have stopped moving: two scrapes
    ``settle_s`` apart agree (or ``max_s`` passed). A Python-backend model reports a request's
    statistics a moment after its response has gone out, so a scrape taken right after the last
    response (or right after the readiness probe) may miss or include it depending on load."""
    fetch = fetch or fetch_text
    deadline = time.monotonic() + max_s
    text = fetch(url)
    counts = _request_counts(parse_metrics(text))
    while time.monotonic() < deadline:
        time.sleep(settle_s)
        text, previous = fetch(url), counts
        counts = _request_counts(parse_metrics(text))
        if counts == previous:
            break
    return text


def _request_counts(samples: dict[str, dict[Labels, float]]) -> tuple:
    return tuple(sorted(per_model(samples, name).items()) for name in (SUCCESS, FAILURE, INFERENCES))


def per_model(samples: dict[str, dict[Labels, float]], name: str) -> dict[str, float]:
    """Sum ``name`` over every label set except ``model`` (versions, failure reasons)."""
    totals: dict[str, float] = defaultdict(float)
    for labels, value in samples.get(name, {}).items():
        model = dict(labels).get("model")
        if model is not None:
            totals[model] += value
    return dict(totals)


def failures_by_reason(samples: dict[str, dict[Labels, float]]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = defaultdict(dict)
    for labels, value in samples.get(FAILURE, {}).items():
        d = dict(labels)
        if "model" in d:
            reason = d.get("reason", "ALL")
            out[d["model"]][reason] = out[d["model"]].get(reason, 0.0) + value
    return dict(out)


@dataclass(frozen=True)
class ModelWindow:
    """One model's server-side numbers between two scrapes."""

    model: str
    requests_ok: int
    requests_failed: int
    rejected: int
    inferences: int
    executions: int
    avg_request_ms: float
    avg_queue_ms: float
    avg_compute_ms: float
    avg_batch: float

    def to_dict(self) -> dict:
        return asdict(self)


def _delta(before: dict[str, float], after: dict[str, float], model: str) -> float:
    return after.get(model, 0.0) - before.get(model, 0.0)


def window(before: dict[str, dict[Labels, float]], after: dict[str, dict[Labels, float]]) -> list[ModelWindow]:
    """Per-model breakdown of the window between two scrapes; models without traffic are left out."""
    get = {name: (per_model(before, name), per_model(after, name)) for name in MODEL_METRICS}
    reasons_before, reasons_after = failures_by_reason(before), failures_by_reason(after)
    models = sorted(set(get[SUCCESS][1]) | set(get[FAILURE][1]))
    rows = []
    for model in models:
        d = {name: _delta(b, a, model) for name, (b, a) in get.items()}
        ok, failed = int(d[SUCCESS]), int(d[FAILURE])
        if ok == 0 and failed == 0:
            continue
        rejected = int(reasons_after.get(model, {}).get("REJECTED", 0) - reasons_before.get(model, {}).get("REJECTED", 0))
        compute_us = d[COMPUTE_INPUT_US] + d[COMPUTE_INFER_US] + d[COMPUTE_OUTPUT_US]
        per_request = (lambda us: us / ok / 1000.0) if ok else (lambda us: 0.0)
        rows.append(ModelWindow(
            model=model,
            requests_ok=ok,
            requests_failed=failed,
            rejected=rejected,
            inferences=int(d[INFERENCES]),
            executions=int(d[EXECUTIONS]),
            avg_request_ms=per_request(d[REQUEST_US]),
            avg_queue_ms=per_request(d[QUEUE_US]),
            avg_compute_ms=per_request(compute_us),
            avg_batch=d[INFERENCES] / d[EXECUTIONS] if d[EXECUTIONS] else 0.0,
        ))
    return rows


def format_window(rows: list[ModelWindow]) -> str:
    """A fixed-width table of :func:`window`'s rows."""
    header = (f"{'model':<24} {'ok':>8} {'failed':>7} {'rejected':>8} {'avg ms':>8} "
              f"{'queue ms':>9} {'compute ms':>10} {'avg batch':>9}")
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(f"{r.model:<24} {r.requests_ok:>8} {r.requests_failed:>7} {r.rejected:>8} "
                     f"{r.avg_request_ms:>8.2f} {r.avg_queue_ms:>9.2f} {r.avg_compute_ms:>10.2f} {r.avg_batch:>9.2f}")
    if not rows:
        lines.append("(no requests reached the server in this window)")
    return "\n".join(lines)
