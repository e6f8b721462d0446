"""`make chaos`: steady load from several retrying clients while faults hit the served tree.

Starts the real `trtserve-server serve` (supervised, as `make serve` runs it) on free ports,
then for ``--duration`` seconds:

- ``--clients`` threads (gRPC and HTTP alternately, ``sentiment`` and ``embed`` alternately)
  each send one real review snippet every ``1/--rate`` seconds with
  ``RetryPolicy.through_recovery()``, and check every answer against the contract;
- a fault injector waits a random ``--min-gap``..``--max-gap`` seconds, sends the next fault of
  a shuffled cycle over the faults of :data:`loadtest.faults.FAULTS` that the served tree has
  targets for (:func:`~loadtest.faults.faults_for`: the one model's stub in the single
  topology, each step's in an ensemble) to a random deployment it applies to, measures the time
  to the supervisor's repair (its ``/status`` counts a reload or a restart) and to the next good
  answer after it (a separate client without retries; with several instances of a model another
  instance may answer at once, so the first good answer alone would not say the fault was
  repaired), and repeats; it stops injecting ``--quiet-tail`` seconds before the end.

It reports requests sent, answered, failed (an error after retries, or a wrong answer) and
lost (sent and neither answered nor failed when the run ended), the recovery time of every
fault, and the supervisor's own counts; the JSON goes to ``--out``. Exit status 1 when any
request was lost or failed, a recovery exceeded ``--hard-limit``, or the server did not stop
cleanly (exit 0, no process left behind).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path

from trtserve_client import RetryPolicy, TrtServeClient
from trtserve_client.errors import TrtServeError
from trtserve_server.embedded import Ports, free_port

from .faults import FAULTS, descendants, faults_for, inject, still_running, time_to_answer
from .workload import load_corpus

DEPLOYMENTS = ("sentiment", "embed")


class Tally:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()

    def add(self, key: str, error: str | None = None) -> None:
        with self.lock:
            self.counts[key] += 1
            if error:
                self.errors[error[:160]] += 1


def _client_loop(index: int, ports: Ports, deployments: tuple[str, ...], corpus: list[str], rate: float,
                 stop: threading.Event, tally: Tally) -> None:
    protocol = "grpc" if index % 2 == 0 else "http"
    url = f"127.0.0.1:{ports.grpc if protocol == 'grpc' else ports.http}"
    rng = random.Random(index)
    # the client timeout is not retried (the server may still be working): it outlasts a recovery
    with TrtServeClient(url, protocol=protocol, timeout_s=30, retry=RetryPolicy.through_recovery()) as client:
        next_at = time.monotonic()
        while not stop.is_set():
            deployment = deployments[(index // 2 + int(next_at * rate)) % len(deployments)]
            text = corpus[rng.randrange(len(corpus))]
            tally.add("sent")
            try:
                if deployment == "embed":
                    ok = client.embed(text, model=deployment).shape == (1, 384)
                else:
                    ok = client.classify(text, model=deployment)[0].label in ("negative", "positive")
                tally.add("answered" if ok else "failed", None if ok else "wrong answer")
            except TrtServeError as e:
                tally.add("failed", f"{type(e).__name__}: {e}")
            next_at += 1.0 / rate
            time.sleep(max(0.0, next_at - time.monotonic()))


def _wait_banner(proc: subprocess.Popen, timeout_s: float, log) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line and proc.poll() is not None:
            raise SystemExit(f"chaos: the server exited with {proc.returncode} before it was ready")
        log.write(line)
        if line.startswith("trtserve: Triton is serving"):
            return
    raise SystemExit("chaos: no ready banner")


def _pump(proc: subprocess.Popen, log) -> None:
    for line in proc.stdout:
        log.write(line)
        log.flush()


def run(args: argparse.Namespace) -> dict:
    ports, status_port = Ports.free(), free_port()
    corpus = load_corpus(max_texts=2000)
    log_path = Path(args.log)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "trtserve_server.cli", "serve", "--model-repository", args.repository,
         "--http-port", str(ports.http), "--grpc-port", str(ports.grpc), "--metrics-port", str(ports.metrics),
         "--status-port", str(status_port), "--log-file", str(log_path.with_suffix(".triton.log"))],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    faults: list[dict] = []
    applicable: dict[str, tuple[str, ...]] = {}
    load_at_start = os.getloadavg()
    tally = Tally()
    stop = threading.Event()
    try:
        _wait_banner(proc, 300, log)
        threading.Thread(target=_pump, args=(proc, log), daemon=True).start()
        deployments = tuple(args.deployments.split(","))
        applicable.update({d: faults_for(proc.pid, d) for d in deployments})
        kinds = [k for k in FAULTS if any(k in a for a in applicable.values())]
        clients = [threading.Thread(target=_client_loop, args=(i, ports, deployments, corpus, args.rate, stop, tally),
                                    daemon=True)
                   for i in range(args.clients)]
        for t in clients:
            t.start()
        rng = random.Random(args.seed)
        cycle: list[str] = []
        start = time.monotonic()
        end_faults = start + args.duration - args.quiet_tail
        while True:
            gap = rng.uniform(args.min_gap, args.max_gap)
            if time.monotonic() + gap >= end_faults:
                break
            time.sleep(gap)
            if not cycle:
                cycle = list(kinds)
                rng.shuffle(cycle)
            kind = cycle.pop()
            deployment = rng.choice([d for d in deployments if kind in applicable[d]])
            before = _repairs(status_port)
            fault = inject(kind, proc.pid, deployment, rng)
            repaired = _wait_repaired(status_port, before, fault.at, limit_s=args.hard_limit * 2)
            recovery = time_to_answer(f"127.0.0.1:{ports.http}", deployment, fault.at, limit_s=args.hard_limit * 2)
            record = {"t_s": round(fault.at - start, 2), "kind": kind, "deployment": deployment,
                      "target": fault.target, "repaired_s": None if repaired is None else round(repaired, 3),
                      "recovery_s": None if recovery is None or repaired is None else round(recovery, 3)}
            faults.append(record)
            print(f"chaos: {record}", flush=True)
        time.sleep(max(0.0, start + args.duration - time.monotonic()))
        stop.set()
        for t in clients:  # a request can take at most the retry deadline plus one timeout
            t.join(timeout=RetryPolicy.through_recovery().deadline_s + 35)
        in_flight = sum(t.is_alive() for t in clients)
        supervisor = _status(status_port)
    finally:
        stop.set()
        server = descendants(proc.pid)
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait()
        leftovers = still_running(server)
        log.close()
    counts = tally.counts
    lost = counts["sent"] - counts["answered"] - counts["failed"]
    by_kind = {}
    for kind in (k for k in FAULTS if any(f["kind"] == k for f in faults)):
        times = [f["recovery_s"] for f in faults if f["kind"] == kind and f["recovery_s"] is not None]
        by_kind[kind] = {"n": sum(f["kind"] == kind for f in faults),
                         "median_s": round(statistics.median(times), 3) if times else None,
                         "max_s": max(times) if times else None}
    return {
        "machine": {"cpu": _cpu(), "cores": os.cpu_count(), "python": platform.python_version(),
                    # the machine is shared: how busy it was bounds what the recovery times mean
                    "loadavg_1m_at_start": round(load_at_start[0], 2), "loadavg_1m_at_end": round(os.getloadavg()[0], 2)},
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "log")},
        "requests": {"sent": counts["sent"], "answered": counts["answered"], "failed": counts["failed"],
                     "lost": lost, "in_flight_at_end": in_flight},
        "errors": dict(tally.errors.most_common(10)),
        "faults_by_deployment": {d: list(kinds) for d, kinds in applicable.items()},
        "faults": faults,
        "recovery_by_fault": by_kind,
        "supervisor": supervisor,
        "server_stop": {"exit_code": code, "processes_left": len(leftovers)},
    }


def _status(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=5) as r:
        return json.loads(r.read())


def _repairs(port: int) -> int:
    """Reloads and restarts the supervisor has done so far."""
    status = _status(port)
    return sum(status["reloads"].values()) + status["restarts_total"]


def _wait_repaired(port: int, before: int, since: float, limit_s: float) -> float | None:
    """Seconds from ``since`` to the supervisor's next reload or restart (None: none within ``limit_s``)."""
    while time.monotonic() < since + limit_s:
        try:
            if _repairs(port) > before:
                return time.monotonic() - since
        except OSError:  # the status server answers throughout; a refused read is retried
            pass
        time.sleep(0.05)
    return None


def _cpu() -> str:
    try:
        from trtserve_build.core.host import cpu_model

        return cpu_model()
    except Exception:  # noqa: BLE001 - a report without a CPU name is still a report
        return platform.processor() or "unknown"


def verdict(report: dict, hard_limit: float) -> list[str]:
    problems = []
    r = report["requests"]
    if r["lost"]:
        problems.append(f"{r['lost']} request(s) lost")
    if r["failed"]:
        problems.append(f"{r['failed']} request(s) failed after retries: {report['errors']}")
    slow = [f for f in report["faults"] if f["recovery_s"] is None or f["recovery_s"] > hard_limit]
    if slow:
        problems.append(f"recovery over {hard_limit:g}s: {slow}")
    stop = report["server_stop"]
    if stop["exit_code"] != 0 or stop["processes_left"]:
        problems.append(f"unclean stop: {stop}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repository", default="model_repository/cpu")
    parser.add_argument("--duration", type=float, default=300.0)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--deployments", default=",".join(DEPLOYMENTS), help="comma-separated; faults hit these")
    parser.add_argument("--rate", type=float, default=5.0, help="requests per second per client")
    parser.add_argument("--min-gap", type=float, default=3.0, help="seconds between a recovery and the next fault, at least")
    parser.add_argument("--max-gap", type=float, default=10.0)
    parser.add_argument("--quiet-tail", type=float, default=10.0, help="no faults in the last seconds")
    parser.add_argument("--hard-limit", type=float, default=30.0)
    parser.add_argument("--seed", type=int, default=15)
    parser.add_argument("--out", default="results/chaos.json")
    parser.add_argument("--log", default=".cache/chaos/serve.log")
    args = parser.parse_args(argv)
    report = run(args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    r = report["requests"]
    print(f"chaos: {len(report['faults'])} faults in {args.duration:g}s; requests sent {r['sent']}, "
          f"answered {r['answered']}, failed {r['failed']}, lost {r['lost']}")
    for kind, s in report["recovery_by_fault"].items():
        print(f"  {kind:17s} n={s['n']}  median {s['median_s']}s  max {s['max_s']}s")
    print(f"supervisor: {json.dumps(report['supervisor'])}\nreport: {out}")
    problems = verdict(report, args.hard_limit)
    for p in problems:
        print(f"chaos: FAIL: {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
