"""A/B two or more model repositories: `sentiment` at concurrency 1 (and optionally throughput).

Every repository gets its own embedded Triton, all running at once (an idle server costs
nothing); the measurement alternates between them in rounds, so drift in the machine's load
hits every variant alike, which matters on a shared VM where run-to-run noise exceeds most
effects worth measuring. Per variant: client p50/p95 and, from Triton's statistics, the average
time per request in each step of the ensemble.

    # a variant: copy the generated repository and change one thing in it
    cp -r model_repository/cpu /tmp/b && $EDITOR /tmp/b/sentiment_encoder/config.pbtxt
    python -m bench.ab_repositories model_repository/cpu /tmp/b --rounds 20 [--throughput-seconds 5]
"""
from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

import numpy as np

from bench.bench_serving import add_step_times, grpc_text_caller, mean_step_times, served_throughput, step_stats

REPO_ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("repositories", nargs="+", type=Path)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--requests", type=int, default=100, help="sequential requests per variant per round")
    parser.add_argument("--throughput-seconds", type=float, default=0.0,
                        help="also measure 8-client throughput for this long per variant per round")
    args = parser.parse_args(argv)

    from trtserve_build.data.datasets import corpus_texts
    from trtserve_server.embedded import EmbeddedServer, Ports

    texts = corpus_texts()[-2000:]
    logs = REPO_ROOT / "results"
    logs.mkdir(exist_ok=True)
    servers = [EmbeddedServer(r, Ports.free(), log_path=logs / f"ab_triton_{i}.log")
               for i, r in enumerate(args.repositories)]
    with contextlib.ExitStack() as stack:
        for server in servers:
            stack.enter_context(server)
        for server in servers:
            server.wait_ready(180)
        callers = [grpc_text_caller(s.grpc_url) for s in servers]
        latency = [[] for _ in servers]
        throughput = [[] for _ in servers]
        steps = [{} for _ in servers]
        for r in range(args.rounds):
            chunk = [texts[(r * args.requests + k) % len(texts)] for k in range(args.requests)]
            for i, (server, (call, _)) in enumerate(zip(servers, callers)):
                before = step_stats(server.grpc_url)
                for text in chunk:
                    start = time.perf_counter()
                    call(text)
                    latency[i].append((time.perf_counter() - start) * 1000)
                add_step_times(steps[i], step_stats(server.grpc_url), before)
                if args.throughput_seconds > 0:
                    n, elapsed, _ = served_throughput(server.grpc_url, texts, 8, args.throughput_seconds)
                    throughput[i].append(n / elapsed)
        for _, client in callers:
            client.close()

    for repo, lat, tp, st in zip(args.repositories, latency, throughput, steps):
        line = f"{str(repo):40} c=1 p50 {np.percentile(lat, 50):6.2f} ms  p95 {np.percentile(lat, 95):6.2f} ms"
        if tp:
            line += f"  8 clients {np.mean(tp):6.1f} texts/s (rounds {[round(x) for x in tp]})"
        print(line)
        for name, v in mean_step_times(st).items():
            print(f"    {name:22} {v['success']:6.0f} us/request: queue {v['queue']:4.0f}, input {v['compute_input']:4.0f},"
                  f" infer {v['compute_infer']:5.0f}, output {v['compute_output']:4.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
