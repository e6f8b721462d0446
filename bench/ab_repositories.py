"""A/B two or more model repositories: `sentiment` at concurrency 1 (and optionally throughput).

Every repository gets its own embedded Triton, all running at once (an idle server costs
nothing); the measurement alternates between them in rounds, so drift in the machine's load
hits every variant alike, which matters on a shared VM where run-to-run noise exceeds most
effects worth measuring. Per variant: client p50/p95 and, from Triton's statistics, the average
time per request in each step of the ensemble.

    # a variant: copy the generated repository and change one thing in it
    cp -r model_repository/cpu /tmp/b && $EDITOR /tmp/b/sentiment_encoder/config.pbtxt
    python -m bench.ab_repositories model_repository/cpu /tmp/b --rounds 20 [--throughput-seconds 5]

``--server-args`` (once per repository, in order) starts that repository's server with extra
tritonserver options: one repository twice with two sets of options A/Bs a server setting, e.g.
the Python backend's shared memory:

    python -m bench.ab_repositories model_repository/cpu model_repository/cpu --server-args= \
        --server-args=--backend-config=python,shm-default-byte-size=67108864 --perf-analyzer --rounds 6

(the ``=`` form: argparse would take a value that starts with ``--`` for an option of its own)

With ``--perf-analyzer`` the served numbers of each round come from perf_analyzer (the outside
C++ client `make bench` reads the targets with): c=1, and 8 clients when ``--throughput-seconds``
is set. Reference rows, measured in the same rounds: ``--floor`` (the first repository's models
doing nothing, c=1: bench/ensemble_floor.py), ``--in-process`` (each one-model repository's
``Pipeline.run`` in this process) and ``--raw-onnxruntime`` (the exported graph, as `make bench`'s
raw row). Round values are reported with their median.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.bench_serving import (add_step_times, grpc_text_caller, mean_step_times, one_model_pipeline,
                                 onnxruntime_caller, served_throughput, step_stats, time_calls)

REPO_ROOT = Path(__file__).resolve().parents[1]


def reference_callers(args) -> dict:
    """In-process subjects measured in the same rounds (latency only): name -> caller."""
    out = {}
    if args.raw_onnxruntime:
        from trtserve_build.core.paths import export_dir
        from trtserve_build.core.spec import load_spec

        spec = load_spec(REPO_ROOT / "deployments" / "sentiment.toml")
        art = export_dir(spec)
        out["raw onnxruntime (in-process)"] = onnxruntime_caller(
            art / "model.onnx", art / "tokenizer.json", spec.model.max_sequence_length, spec.model.labels)
    if args.in_process:
        for repo in args.repositories:
            pipeline = one_model_pipeline(repo)
            if pipeline is not None:
                out[f"{repo} Pipeline.run (in-process)"] = lambda text, p=pipeline: p.run([[text]])
    return out


def server_variants(repositories, server_args) -> list[tuple[str, list[str]]]:
    """(name, extra tritonserver options) per repository: ``server_args[i]`` (one string, split as
    a shell would) for the i-th, none for those past the end; the name is the path and the options."""
    if len(server_args) > len(repositories):
        raise ValueError("more --server-args than repositories")
    extra = [shlex.split(a) for a in server_args] + [[] for _ in range(len(repositories) - len(server_args))]
    names = [" ".join([str(r), *e]) for r, e in zip(repositories, extra)]
    if len(set(names)) < len(names):
        raise ValueError("two variants are the same repository with the same --server-args")
    return list(zip(names, extra))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("repositories", nargs="+", type=Path)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--requests", type=int, default=100, help="sequential requests per variant per round")
    parser.add_argument("--throughput-seconds", type=float, default=0.0,
                        help="also measure 8-client throughput for this long per variant per round")
    parser.add_argument("--perf-analyzer", action="store_true",
                        help="served c=1 (and 8 clients) by perf_analyzer ($PERF_ANALYZER), not the Python client")
    parser.add_argument("--pa-ms", type=int, default=1500,
                        help="perf_analyzer c=1 measurement window (three per value)")
    parser.add_argument("--floor", action="store_true", help="add the first repository's do-nothing floor (c=1)")
    parser.add_argument("--in-process", action="store_true", help="add each one model's Pipeline.run in-process")
    parser.add_argument("--raw-onnxruntime", action="store_true", help="add raw ONNX Runtime in-process")
    parser.add_argument("--server-args", action="append", default=[],
                        help="extra tritonserver options for the repository in the same position (repeat per repository)")
    parser.add_argument("--output", type=Path, help="write the rounds and medians as JSON")
    args = parser.parse_args(argv)
    try:
        variants = server_variants(args.repositories, args.server_args)
    except ValueError as e:
        parser.error(str(e))

    from bench import perf_analyzer
    from bench.ensemble_floor import write_floor_repository
    from trtserve_build.data.datasets import corpus_texts
    from trtserve_server.embedded import EmbeddedServer, Ports

    texts = corpus_texts()[-2000:]
    logs = REPO_ROOT / "results"
    logs.mkdir(exist_ok=True)
    pa = perf_analyzer.command() if args.perf_analyzer else None
    if args.perf_analyzer and not pa:
        print("no perf_analyzer here (set PERF_ANALYZER): the Python client measures", file=sys.stderr)
    work = Path(tempfile.mkdtemp(prefix="ab-pa-"))  # under /tmp: a perf_analyzer container sees it
    data = perf_analyzer.write_input_data(texts[:1000], work / "texts.json") if pa else None
    names, extra = [n for n, _ in variants], [e for _, e in variants]
    repos = list(args.repositories)
    if args.floor:
        repos.append(write_floor_repository(repos[0], logs / "ab_floor_repository"))
        names.append(f"floor of {args.repositories[0]} (models doing nothing)")
        extra.append([])
    servers = [EmbeddedServer(r, Ports.free(), log_path=logs / f"ab_triton_{i}.log", extra_args=tuple(e))
               for i, (r, e) in enumerate(zip(repos, extra))]
    rows = {name: {"c1_p50_ms": [], "c1_p95_ms": [], "clients8_per_s": []} for name in names}
    steps = {name: {} for name in names}
    with contextlib.ExitStack() as stack:
        for server in servers:
            stack.enter_context(server)
        for server in servers:
            server.wait_ready(180)
        callers = [grpc_text_caller(s.grpc_url) for s in servers]
        references = reference_callers(args)
        rows.update({name: {"c1_p50_ms": [], "c1_p95_ms": []} for name in references})
        for call in [c for c, _ in callers] + list(references.values()):
            time_calls(call, texts[:10])  # warm-up
        for r in range(args.rounds):
            print(f"round {r + 1}/{args.rounds}", file=sys.stderr)
            chunk = [texts[(r * args.requests + k) % len(texts)] for k in range(args.requests)]
            for name, server, (call, _) in zip(names, servers, callers):
                floor = args.floor and server is servers[-1]
                if server.process.poll() is not None:
                    # a server that died (Triton 2.51: a cancelled gRPC call can crash it, and
                    # perf_analyzer may leave calls in flight when it stops): its later rounds
                    # stay unmeasured, the others go on
                    print(f"{name}: the server exited ({server.process.returncode}), see {server.log_path}",
                          file=sys.stderr)
                    continue
                before = step_stats(server.grpc_url)
                if pa:
                    got = perf_analyzer.run("sentiment", server.grpc_url, 1, data, measurement_ms=args.pa_ms, pa=pa,
                                            workdir=work)
                    lat = [got.get("p50_ms", float("nan"))], [got.get("p95_ms", float("nan"))]
                    if "error" in got:
                        print(f"{name} c=1: {got['error']}", file=sys.stderr)
                else:
                    samples = time_calls(call, chunk)
                    lat = [np.percentile(samples, 50)], [np.percentile(samples, 95)]
                rows[name]["c1_p50_ms"] += lat[0]
                rows[name]["c1_p95_ms"] += lat[1]
                if server.process.poll() is None:
                    add_step_times(steps[name], step_stats(server.grpc_url), before)
                if args.throughput_seconds > 0 and not floor:
                    if pa:
                        got = perf_analyzer.run("sentiment", server.grpc_url, 8, data, pa=pa, workdir=work,
                                                measurement_ms=int(args.throughput_seconds * 1000 / 3))
                        rows[name]["clients8_per_s"].append(got.get("infer_per_s", float("nan")))
                        if "error" in got:
                            print(f"{name} 8 clients: {got['error']}", file=sys.stderr)
                    else:
                        n, elapsed, _ = served_throughput(server.grpc_url, texts, 8, args.throughput_seconds)
                        rows[name]["clients8_per_s"].append(n / elapsed)
            for name, call in references.items():
                samples = time_calls(call, chunk)
                rows[name]["c1_p50_ms"].append(np.percentile(samples, 50))
                rows[name]["c1_p95_ms"].append(np.percentile(samples, 95))
        for _, client in callers:
            client.close()
    return report(rows, steps, args, "perf_analyzer" if pa else "python client")


def _median(values) -> float:
    """The median of the rounds that measured something (a perf_analyzer run that failed is NaN)."""
    values = np.asarray(values, dtype=float)
    return float(np.nanmedian(values)) if not np.isnan(values).all() else float("nan")


def _round(x: float, digits: int | None = None):
    return x if np.isnan(x) else round(x, digits)


def report(rows: dict, steps: dict, args, client: str) -> int:
    # a perf_analyzer run that failed is NaN in its round and no measurement in the median
    medians = {name: {k: _median(v) for k, v in row.items() if v} for name, row in rows.items()}
    print(f"{args.rounds} interleaved rounds, served by {client}; load average {os.getloadavg()}; "
          "median of the rounds [rounds]")
    for name, row in rows.items():
        m = medians[name]
        line = (f"{name:44} c=1 p50 {m['c1_p50_ms']:6.2f} ms {[_round(x, 2) for x in row['c1_p50_ms']]}"
                f"  p95 {m['c1_p95_ms']:6.2f} ms")
        if row.get("clients8_per_s"):
            line += f"  8 clients {m['clients8_per_s']:6.1f}/s {[_round(x) for x in row['clients8_per_s']]}"
        print(line)
        for step, v in mean_step_times(steps.get(name, {})).items():
            print(f"    {step:22} {v['success']:6.0f} us/request: queue {v['queue']:4.0f}, input {v['compute_input']:4.0f},"
                  f" infer {v['compute_infer']:5.0f}, output {v['compute_output']:4.0f}")
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps({
            "client": client, "rounds": args.rounds, "load_average_at_end": os.getloadavg(), "cpus": os.cpu_count(),
            "date": time.strftime("%Y-%m-%d %H:%M:%S"), "server_args": args.server_args, "rounds_by_subject": rows,
            "median": medians,
            "c1_steps_us_per_request": {n: mean_step_times(s) for n, s in steps.items()}}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
