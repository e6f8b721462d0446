"""Reading Locust's CSV reports: the run summary, the knee of a step run, and the SLO gate.

Locust (``--csv PREFIX --csv-full-history``) writes ``PREFIX_stats.csv`` (totals per request
name plus an ``Aggregated`` row), ``PREFIX_failures.csv`` (one row per distinct error) and
``PREFIX_stats_history.csv`` (one row per second; with full history the ``Aggregated`` row's
percentiles are over the last ~10 s, Locust's "current" window). Pure functions over those
files, unit-tested on small CSVs.
"""
from __future__ import annotations

import csv
from dataclasses import asdict, dataclass, field
from pathlib import Path

AGGREGATED = "Aggregated"


class ReportError(RuntimeError):
    """A Locust report file is missing or not in the expected format."""


def _read(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        raise ReportError(f"Locust did not write {path}; see its output above")
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _num(row: dict[str, str], key: str) -> float:
    value = row.get(key, "")
    if value in ("", "N/A", None):
        return 0.0
    try:
        return float(value)
    except ValueError:
        raise ReportError(f"column {key!r} is {value!r}, not a number") from None


@dataclass(frozen=True)
class Latency:
    """One stats row: counts, rate and latency percentiles in milliseconds."""

    name: str
    requests: int
    failures: int
    rps: float
    avg_ms: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float

    @property
    def failure_rate(self) -> float:
        return self.failures / self.requests if self.requests else 0.0

    @classmethod
    def from_row(cls, row: dict[str, str]) -> "Latency":
        return cls(
            name=row["Name"] if not row.get("Type") else f"{row['Type']} {row['Name']}",
            requests=int(_num(row, "Request Count")),
            failures=int(_num(row, "Failure Count")),
            rps=_num(row, "Requests/s"),
            avg_ms=_num(row, "Average Response Time"),
            p50_ms=_num(row, "50%"),
            p95_ms=_num(row, "95%"),
            p99_ms=_num(row, "99%"),
            max_ms=_num(row, "Max Response Time"),
        )


@dataclass
class Summary:
    total: Latency
    by_name: list[Latency]
    failures: list[dict[str, object]]
    knee: "Knee | None" = None
    server: list[dict] = field(default_factory=list)
    window_s: float = 0.0

    def to_dict(self) -> dict:
        d = {
            "requests": self.total.requests,
            "failures": self.total.failures,
            "failure_rate": self.total.failure_rate,
            "rps": self.total.rps,
            "avg_ms": self.total.avg_ms,
            "p50_ms": self.total.p50_ms,
            "p95_ms": self.total.p95_ms,
            "p99_ms": self.total.p99_ms,
            "max_ms": self.total.max_ms,
            "by_name": [asdict(x) for x in self.by_name],
            "failures_by_error": self.failures,
            "server": self.server,
            "server_window_s": self.window_s,
        }
        d["knee"] = asdict(self.knee) if self.knee else None
        return d


def read_summary(prefix: Path) -> Summary:
    """The summary of a finished run from ``PREFIX_stats.csv`` and ``PREFIX_failures.csv``."""
    rows = _read(Path(f"{prefix}_stats.csv"))
    total = [r for r in rows if r["Name"] == AGGREGATED]
    if not total:
        raise ReportError(f"{prefix}_stats.csv has no {AGGREGATED} row")
    failures = [
        {"name": r["Name"], "error": r["Error"], "occurrences": int(_num(r, "Occurrences"))}
        for r in _read(Path(f"{prefix}_failures.csv"))
    ]
    return Summary(
        total=Latency.from_row({**total[0], "Type": ""}),
        by_name=[Latency.from_row(r) for r in rows if r["Name"] != AGGREGATED],
        failures=failures,
    )


# ---- the knee of a step run ------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    users: int
    seconds: float
    rps: float
    p95_ms: float
    failures: int


@dataclass(frozen=True)
class Knee:
    """``capacity_rps`` is the throughput of the last step whose p95 met ``target_p95_ms``
    (before the first step that did not); ``None`` when even the first step missed it."""

    target_p95_ms: float
    capacity_rps: float | None
    knee_users: int | None
    first_violation_users: int | None
    max_rps: float
    steps: list[Step]


def read_steps(prefix: Path, window_s: float = 10.0) -> list[Step]:
    """Per-step throughput and p95 from ``PREFIX_stats_history.csv`` (``Aggregated`` rows).

    A step is a run of rows with the same user count. Its throughput is counted over its last
    ``window_s`` seconds (after the spawn and the previous step's tail have left the window)
    and its p95 is the "current" p95 of its last row, which covers the same window. Only the
    rising part counts: the user count falling at the end is Locust stopping, not a step.
    """
    rows = [r for r in _read(Path(f"{prefix}_stats_history.csv")) if r["Name"] == AGGREGATED]
    segments: list[list[dict[str, str]]] = []
    for row in rows:
        users = int(_num(row, "User Count"))
        if users == 0 and not segments:
            continue
        last = int(_num(segments[-1][-1], "User Count")) if segments else 0
        if users == last:
            segments[-1].append(row)
        elif users > last:
            segments.append([row])
        else:
            break
    steps = []
    for seg in segments:
        end_t = _num(seg[-1], "Timestamp")
        tail = [r for r in seg if _num(r, "Timestamp") >= end_t - window_s]
        first = tail[0] if len(tail) > 1 else seg[0]
        span = end_t - _num(first, "Timestamp")
        done = _num(seg[-1], "Total Request Count") - _num(first, "Total Request Count")
        steps.append(Step(
            users=int(_num(seg[-1], "User Count")),
            seconds=end_t - _num(seg[0], "Timestamp"),
            rps=done / span if span > 0 else 0.0,
            p95_ms=_num(seg[-1], "95%"),
            failures=int(_num(seg[-1], "Total Failure Count") - _num(seg[0], "Total Failure Count")),
        ))
    return steps


def find_knee(steps: list[Step], target_p95_ms: float) -> Knee:
    """The highest-throughput load before p95 first exceeds ``target_p95_ms``."""
    capacity, knee_users, violation = None, None, None
    for step in steps:
        if step.p95_ms > target_p95_ms:
            violation = step.users
            break
        if capacity is None or step.rps > capacity:
            capacity, knee_users = step.rps, step.users
    return Knee(
        target_p95_ms=target_p95_ms,
        capacity_rps=capacity,
        knee_users=knee_users,
        first_violation_users=violation,
        max_rps=max((s.rps for s in steps), default=0.0),
        steps=steps,
    )


# ---- SLO gate ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Slo:
    """Optional thresholds; a run that misses any given one fails (``run.py`` exits 1)."""

    p95_ms: float | None = None
    failure_rate: float | None = None
    min_requests: int | None = None

    def check(self, total: Latency) -> list[str]:
        """Human-readable violations (empty when the run meets every given threshold)."""
        problems = []
        if self.min_requests is not None and total.requests < self.min_requests:
            problems.append(f"{total.requests} requests < min {self.min_requests}")
        if self.p95_ms is not None and total.p95_ms > self.p95_ms:
            problems.append(f"p95 {total.p95_ms:.0f} ms > {self.p95_ms:g} ms")
        if self.failure_rate is not None and total.failure_rate > self.failure_rate:
            problems.append(
                f"failure rate {total.failure_rate:.4%} ({total.failures}/{total.requests}) > {self.failure_rate:.4%}")
        return problems

    @property
    def given(self) -> bool:
        return any(v is not None for v in (self.p95_ms, self.failure_rate, self.min_requests))


def format_summary(summary: Summary, slo_problems: list[str] | None, slo: Slo) -> str:
    t = summary.total
    lines = [
        f"requests {t.requests}  failures {t.failures} ({t.failure_rate:.2%})  {t.rps:.1f} req/s",
        f"latency ms: p50 {t.p50_ms:.0f}  p95 {t.p95_ms:.0f}  p99 {t.p99_ms:.0f}  avg {t.avg_ms:.1f}  max {t.max_ms:.0f}",
        "",
        f"{'request':<28} {'count':>7} {'fail':>6} {'req/s':>7} {'p50':>6} {'p95':>6} {'p99':>6}",
    ]
    for x in summary.by_name:
        lines.append(f"{x.name:<28} {x.requests:>7} {x.failures:>6} {x.rps:>7.1f} {x.p50_ms:>6.0f} {x.p95_ms:>6.0f} {x.p99_ms:>6.0f}")
    if summary.failures:
        lines += ["", "failures:"]
        lines += [f"  {f['occurrences']:>6} x {f['name']}: {f['error']}" for f in summary.failures]
    if summary.knee:
        k = summary.knee
        lines += ["", f"step shape, knee at p95 <= {k.target_p95_ms:g} ms:"]
        lines += [f"  {s.users:>4} users  {s.rps:>7.1f} req/s  p95 {s.p95_ms:>6.0f} ms  failures {s.failures}" for s in k.steps]
        if k.capacity_rps is None:
            lines.append(f"  p95 exceeded {k.target_p95_ms:g} ms already at the first step")
        else:
            beyond = (f", exceeded from {k.first_violation_users} users" if k.first_violation_users
                      else " (not exceeded up to the last step)")
            lines.append(f"  capacity {k.capacity_rps:.1f} req/s at {k.knee_users} users{beyond}; max seen {k.max_rps:.1f} req/s")
    if slo.given:
        verdict = "PASSED" if not slo_problems else "FAILED: " + "; ".join(slo_problems)
        lines += ["", f"SLO gate {verdict}"]
    return "\n".join(lines)
