"""Where the served c=1 time goes on this host, in interleaved rounds on the same texts:

  * raw ONNX Runtime in-process (fast tokenizer + session.run + softmax: `make bench`'s baseline);
  * the served one model's own code in-process (``Pipeline.run``, built as the preferred instance),
    with its phase clock (tokenize, engine, postprocess);
  * the served model under perf_analyzer at c=1, async gRPC (as `make bench`) and sync, with the
    server's phase times (``TRTSERVE_PHASE_TIMES=1``: read, tokenize, engine, postprocess, respond
    per execution, logged by the model at unload);
  * the do-nothing floor of the same topology under perf_analyzer at c=1;
  * the served model and the floor again over HTTP (async): the same requests through Triton's
    other frontend (libevhtp instead of gRPC's completion-queue threads);
  * raw ONNX Runtime and the one model in-process again, each call after an idle gap
    (``--gap-ms``, the caller sleeping: what a core does between a served c=1 request and the
    next): whether the host makes the same code slower after its cores idled, apart from Triton.

    PERF_ANALYZER="$(bench/perf_analyzer_setup.sh)" python -m bench.c1_probe --rounds 3 \
        --output docs/results/vm_bench/c1_probe_<date>.json

Needs `make engines` (the cpu repository) first.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ["TRTSERVE_PHASE_TIMES"] = "1"  # the served model's phase clock (read by its initialize)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from bench import perf_analyzer  # noqa: E402
from bench.bench_serving import (REPO_ROOT, latency_summary, one_model_pipeline, onnxruntime_caller,  # noqa: E402
                                 time_calls)

#: the perf_analyzer subjects, each read at c=1 in every round: (key, which server, sync, protocol)
SERVED = (("served_async", "server", False, "grpc"), ("served_sync", "server", True, "grpc"),
          ("floor_async", "floor", False, "grpc"), ("served_http", "server", False, "http"),
          ("floor_http", "floor", False, "http"))
SERVED_KEYS = tuple(key for key, *_ in SERVED)
PHASES = re.compile(r"sentiment phase times: (\d+) executions, us per execution: ([^\"\n]*)")


def gap_calls(fn, texts: list[str], gap_ms: float) -> list[float]:
    """:func:`time_calls` with the caller sleeping ``gap_ms`` before each call (not counted)."""
    samples = []
    for t in texts:
        time.sleep(gap_ms / 1000)
        samples += time_calls(fn, [t])
    return samples


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repository", default=str(REPO_ROOT / "model_repository" / "cpu"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=300, help="in-process calls per subject and round")
    parser.add_argument("--gap-ms", type=float, default=1.0, help="idle gap before each call of the gap subjects")
    parser.add_argument("--output", default=str(REPO_ROOT / "results" / "c1_probe.json"))
    args = parser.parse_args(argv)

    from bench.ensemble_floor import write_floor_repository
    from trtserve_backend.pipeline import PhaseClock
    from trtserve_build.core.paths import export_dir
    from trtserve_build.core.spec import load_spec
    from trtserve_build.data.datasets import corpus_texts
    from trtserve_server.embedded import EmbeddedServer, Ports

    spec = load_spec(REPO_ROOT / "deployments" / "sentiment.toml")
    artifacts = export_dir(spec)
    texts = corpus_texts()[-2000:][:1000]
    work = Path(tempfile.mkdtemp(prefix="c1-probe-"))  # under /tmp: a perf_analyzer container sees it
    data = perf_analyzer.write_input_data(texts, work / "texts.json")
    repository = Path(args.repository)
    raw = onnxruntime_caller(artifacts / "model.onnx", artifacts / "tokenizer.json", spec.model.max_sequence_length,
                             spec.model.labels)
    pipeline = one_model_pipeline(repository)
    if pipeline is None:
        print("c1_probe: the repository's sentiment is not one Python model", file=sys.stderr)
        return 2
    pipeline.clock = clock = PhaseClock()

    def in_process(text: str):  # the one model, its phase clock counting each call
        pipeline.clock.start()
        pipeline.run([[text]])
        pipeline.clock.executions += 1

    gap_clock = PhaseClock()

    def in_process_after_gap(text: str):
        pipeline.clock = gap_clock
        try:
            in_process(text)
        finally:
            pipeline.clock = clock

    log = work / "triton.log"
    floor_repo = write_floor_repository(repository, work / "floor_repository")
    rows: dict[str, list] = {k: [] for k in ("raw_ms", "one_model_ms", "raw_gap_ms", "one_model_gap_ms",
                                             *SERVED_KEYS)}
    with EmbeddedServer(repository, Ports.free(), log_path=log) as server, \
            EmbeddedServer(floor_repo, Ports.free(), log_path=work / "floor.log") as floor:
        server.wait_ready(180)
        floor.wait_ready(180)
        time_calls(raw, texts[:20])  # warm-up
        time_calls(in_process, texts[:20])
        clock.seconds.clear()
        clock.executions = 0
        for r in range(args.rounds):
            chunk = texts[:args.requests]
            rows["raw_ms"] += time_calls(raw, chunk)
            rows["one_model_ms"] += time_calls(in_process, chunk)
            rows["raw_gap_ms"] += gap_calls(raw, chunk, args.gap_ms)
            rows["one_model_gap_ms"] += gap_calls(in_process_after_gap, chunk, args.gap_ms)
            for key, which, sync, protocol in SERVED:
                target = server if which == "server" else floor
                url = target.http_url if protocol == "http" else target.grpc_url
                got = perf_analyzer.run("sentiment", url, 1, data, measurement_ms=3000, workdir=work, sync=sync,
                                        protocol=protocol)
                rows[key].append({k: got.get(k) for k in ("p50_ms", "p95_ms", "avg_ms", "server_compute_infer_ms",
                                                           "network_server_ms", "error")})
            print(f"round {r + 1}/{args.rounds}: raw {statistics.median(rows['raw_ms']):.2f} ms, "
                  f"served {rows['served_async'][-1]['p50_ms']} / sync {rows['served_sync'][-1]['p50_ms']} / "
                  f"http {rows['served_http'][-1]['p50_ms']} ms, floor {rows['floor_async'][-1]['p50_ms']} / "
                  f"http {rows['floor_http'][-1]['p50_ms']} ms",
                  file=sys.stderr)
    served_phases = PHASES.findall(log.read_text())
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"), "cpus": os.cpu_count(), "rounds": args.rounds,
        "raw_onnxruntime": latency_summary(rows["raw_ms"]), "one_model_in_process": latency_summary(rows["one_model_ms"]),
        "one_model_phases_us": clock.summary(), "gap_ms": args.gap_ms,
        "raw_onnxruntime_after_gap": latency_summary(rows["raw_gap_ms"]),
        "one_model_in_process_after_gap": latency_summary(rows["one_model_gap_ms"]),
        "one_model_phases_after_gap_us": gap_clock.summary(),
        "served_phases_us": served_phases[-1][1] if served_phases else None,
        **{k: rows[k] for k in SERVED_KEYS},
    }

    def median_p50(key: str) -> float | None:
        values = [x["p50_ms"] for x in rows[key] if x.get("p50_ms") is not None]
        return statistics.median(values) if values else None

    result["medians_p50_ms"] = {k: median_p50(k) for k in ("served_async", "served_sync", "floor_async",
                                             "served_http", "floor_http")}
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("raw_onnxruntime", "one_model_in_process", "one_model_phases_us",
                                             "raw_onnxruntime_after_gap", "one_model_in_process_after_gap",
                                             "one_model_phases_after_gap_us", "served_phases_us", "medians_p50_ms")},
                     indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
