"""`make loadtest`: run Locust headless against a trtserve server and report both sides.

    python -m loadtest.run --host 127.0.0.1 --protocol grpc --users 16 --spawn-rate 8 --run-time 60s
    python -m loadtest.run --shape step --step-users 4 --step-time 20 --step-max-users 32 --knee-p95-ms 100
    python -m loadtest.run --slo-p95-ms 250 --slo-failure-rate 0.001        # CI / capacity gate

Steps: wait until every model answers a real inference; scrape Triton's metrics; run Locust
(loadtest/locustfile.py, plus loadtest/shape_step.py for ``--shape step``) in a child process
with ``--csv``/``--html`` into the results folder; scrape the metrics again; print the summary
(requests/s, p50/p95/p99, failures by error, and per model the server-side request count, queue
vs compute time and the average batch the dynamic batcher formed in the same window); apply the
SLO gate. Writes ``summary.json`` and ``summary.txt`` beside Locust's CSV and HTML reports.

Locust runs in a child process because it monkey-patches the whole interpreter for gevent;
this module imports neither locust nor gevent, so tests can call :func:`main` in-process.

Exit status: 0 run complete (and SLO met, when thresholds were given); 1 SLO missed;
2 the run could not be made (server not ready, Locust failed, bad options).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from . import report, triton_metrics
from .workload import DEFAULT_MODELS, LOADTEST_DIR, RequestMix, WorkloadError, load_corpus

REPO_ROOT = LOADTEST_DIR.parent
LOCUSTFILE = LOADTEST_DIR / "locustfile.py"
STEP_SHAPE_FILE = LOADTEST_DIR / "shape_step.py"
USER_CLASSES = {"grpc": "GrpcTritonUser", "http": "HttpTritonUser"}
DEFAULT_PORTS = {"grpc": 8001, "http": 8000}
CSV_PREFIX = "locust"
EXIT_OK, EXIT_SLO, EXIT_BROKEN = 0, 1, 2
#: Extra seconds Locust may take beyond the planned duration (start-up, stop, report writing).
LOCUST_GRACE_S = 60.0


class LoadTestError(RuntimeError):
    """The load test could not be run; the message says what to fix."""


def parse_duration(text: str) -> float:
    """Locust's run-time syntax: ``90``, ``90s``, ``2m``, ``1h30m``, ``1m30s`` -> seconds."""
    text = str(text).strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    match = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", text)
    if not text or not match or not any(match.groups()):
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (use e.g. 30s, 2m, 1m30s)")
    h, m, s = (int(g or 0) for g in match.groups())
    return float(h * 3600 + m * 60 + s)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return value


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must lie in [0, 1], got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="loadtest", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    server = p.add_argument_group("server")
    server.add_argument("--host", default="127.0.0.1", help="Triton host (default 127.0.0.1)")
    server.add_argument("--protocol", choices=sorted(USER_CLASSES), default="grpc")
    server.add_argument("--port", type=int, help="default: 8001 for grpc, 8000 for http")
    server.add_argument("--metrics-port", type=int, default=8002,
                        help="Triton's metrics port for the server-side breakdown (0: skip it)")
    server.add_argument("--ready-timeout", type=float, default=60.0,
                        help="seconds to wait for every model to answer a real inference")
    load = p.add_argument_group("load")
    load.add_argument("--shape", choices=("constant", "step"), default="constant")
    load.add_argument("--users", type=_positive_int, default=8, help="constant shape: concurrent users")
    load.add_argument("--spawn-rate", type=float, default=4.0, help="constant shape: users started per second")
    load.add_argument("--run-time", type=parse_duration, default=parse_duration("30s"),
                      help="constant shape: duration, e.g. 30s, 2m")
    load.add_argument("--step-users", type=_positive_int, default=4, help="step shape: users added per step")
    load.add_argument("--step-time", type=float, default=20.0, help="step shape: seconds per step (>= 15)")
    load.add_argument("--step-max-users", type=_positive_int, default=32, help="step shape: last step's users")
    load.add_argument("--knee-p95-ms", type=float, default=100.0, help="step shape: p95 target that defines the knee")
    load.add_argument("--models", default=",".join(DEFAULT_MODELS), help="comma-separated ensembles")
    load.add_argument("--batch-size", type=_positive_int, default=8, help="texts per client-side batch request")
    load.add_argument("--batch-fraction", type=_fraction, default=0.2, help="share of requests that are batches")
    load.add_argument("--corpus", default="", help="text file, one text per line (default: shipped review snippets)")
    load.add_argument("--timeout", type=float, default=30.0, help="client timeout per request, seconds")
    gate = p.add_argument_group("SLO gate (optional; a missed threshold exits 1)")
    gate.add_argument("--slo-p95-ms", type=float, help="max p95 latency over all requests, ms")
    gate.add_argument("--slo-failure-rate", type=_fraction, help="max share of failed requests, e.g. 0.001")
    gate.add_argument("--slo-min-requests", type=int, help="min number of requests (guards against a run that did nothing)")
    out = p.add_argument_group("output")
    out.add_argument("--results", help="results folder (default results/loadtest/<time>-<protocol>-<shape>)")
    out.add_argument("--locust-arg", action="append", default=[], metavar="ARG",
                     help="extra argument passed to locust as is (repeatable)")
    return p


def planned_seconds(args: argparse.Namespace) -> float:
    if args.shape == "step":
        steps = -(-args.step_max_users // args.step_users)
        return steps * args.step_time
    return args.run_time


def locust_command(args: argparse.Namespace, prefix: Path, html: Path) -> list[str]:
    files = [str(LOCUSTFILE)] + ([str(STEP_SHAPE_FILE)] if args.shape == "step" else [])
    cmd = [
        sys.executable, "-m", "locust", "-f", ",".join(files), "--headless",
        "--host", f"{args.host}:{args.port}",
        "--csv", str(prefix), "--csv-full-history", "--html", str(html), "--only-summary",
        "--exit-code-on-error", "0",  # failures are judged by the SLO gate here, not by Locust
        "--trt-models", args.models, "--trt-batch-size", str(args.batch_size),
        "--trt-batch-fraction", str(args.batch_fraction), "--trt-timeout", str(args.timeout),
        # Let users finish the request in flight at the end, so every request sent is counted.
        "--stop-timeout", str(int(args.timeout) + 1),
    ]
    if args.corpus:
        cmd += ["--trt-corpus", str(Path(args.corpus).resolve())]
    if args.shape == "step":
        cmd += ["--step-users", str(args.step_users), "--step-time", str(args.step_time),
                "--step-max-users", str(args.step_max_users)]
    else:
        cmd += ["--users", str(args.users), "--spawn-rate", str(args.spawn_rate),
                "--run-time", f"{int(round(args.run_time))}s"]
    return cmd + list(args.locust_arg) + [USER_CLASSES[args.protocol]]


def wait_ready(args: argparse.Namespace, models: tuple[str, ...]) -> None:
    from trtserve_client import TrtServeClient, TrtServeError

    try:
        with TrtServeClient(f"{args.host}:{args.port}", protocol=args.protocol, timeout_s=10.0) as client:
            client.wait_ready(list(models), timeout_s=args.ready_timeout)
    except TrtServeError as e:
        raise LoadTestError(f"the server at {args.host}:{args.port} ({args.protocol}) is not answering "
                            f"{', '.join(models)}: {type(e).__name__}: {e}. Start it with `make serve`.") from e


def _scrape(url: str | None, save_to: Path):
    """Parsed metrics (the raw text saved beside the reports), or None without a breakdown."""
    if not url:
        return None
    try:
        text = triton_metrics.fetch_settled(url)
    except triton_metrics.MetricsError as e:
        print(f"loadtest: warning: no server-side breakdown: {e}", file=sys.stderr)
        return None
    save_to.write_text(text)
    return triton_metrics.parse_metrics(text)


def run(args: argparse.Namespace) -> int:
    args.port = args.port or DEFAULT_PORTS[args.protocol]
    if args.shape == "step" and args.step_time < 15:
        raise LoadTestError("--step-time must be >= 15 s: Locust's current p95 covers the last 10 s of a step")
    mix = RequestMix(models=RequestMix.parse_models(args.models), batch_size=args.batch_size,
                     batch_fraction=args.batch_fraction)
    load_corpus(args.corpus or None)  # fail here, not in every Locust user
    results = Path(args.results) if args.results else (
        REPO_ROOT / "results" / "loadtest" / f"{time.strftime('%Y%m%d-%H%M%S')}-{args.protocol}-{args.shape}")
    results.mkdir(parents=True, exist_ok=True)
    prefix, html = results / CSV_PREFIX, results / "report.html"
    metrics_url = f"http://{args.host}:{args.metrics_port}/metrics" if args.metrics_port else None

    wait_ready(args, mix.models)
    before = _scrape(metrics_url, results / "metrics_before.prom")
    cmd = locust_command(args, prefix, html)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    print(f"loadtest: {args.shape} load, {args.protocol} -> {args.host}:{args.port}, "
          f"{planned_seconds(args):.0f}s; reports in {results}", flush=True)
    started = time.monotonic()
    with open(results / "locust.log", "w") as log:
        try:
            proc = subprocess.run(cmd, env=env, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT,
                                  timeout=planned_seconds(args) + args.timeout + LOCUST_GRACE_S)
        except subprocess.TimeoutExpired:
            raise LoadTestError(f"locust ran past its planned time; see {results / 'locust.log'}") from None
    window_s = time.monotonic() - started
    after = _scrape(metrics_url, results / "metrics_after.prom")
    if proc.returncode != 0:
        tail = "\n".join((results / "locust.log").read_text().splitlines()[-25:])
        raise LoadTestError(f"locust exited with status {proc.returncode}:\n{tail}")

    summary = report.read_summary(prefix)
    summary.window_s = window_s
    if before is not None and after is not None:
        summary.server = [row.to_dict() for row in triton_metrics.window(before, after)]
    if args.shape == "step":
        summary.knee = report.find_knee(report.read_steps(prefix), args.knee_p95_ms)
    slo = report.Slo(p95_ms=args.slo_p95_ms, failure_rate=args.slo_failure_rate, min_requests=args.slo_min_requests)
    problems = slo.check(summary.total)

    text = report.format_summary(summary, problems, slo)
    if summary.server:
        rows = [triton_metrics.ModelWindow(**row) for row in summary.server]
        text += (f"\n\nserver side (Triton metrics, same {window_s:.0f}s window; the ensemble's compute is "
                 f"its whole pipeline):\n" + triton_metrics.format_window(rows))
    data = {
        "options": {k: v for k, v in vars(args).items() if k != "locust_arg"},
        "locust_command": cmd,
        "summary": summary.to_dict(),
        "slo": {"thresholds": dataclasses.asdict(slo), "problems": problems, "passed": not problems},
        "reports": {"html": str(html), "csv_prefix": str(prefix)},
    }
    (results / "summary.json").write_text(json.dumps(data, indent=2) + "\n")
    (results / "summary.txt").write_text(text + "\n")
    print(text)
    print(f"\nloadtest: reports in {results} (report.html, {CSV_PREFIX}_*.csv, summary.json)")
    return EXIT_SLO if problems else EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except (LoadTestError, WorkloadError, report.ReportError) as e:
        print(f"loadtest: {e}", file=sys.stderr)
        return EXIT_BROKEN


if __name__ == "__main__":
    sys.exit(main())
