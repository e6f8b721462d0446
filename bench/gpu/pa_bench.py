"""Served deployments under perf_analyzer (the outside C++ client): correctness, then a concurrency
sweep per deployment, with Triton's statistics per model, CPU cores busy per server process and
the GPU's busy share for every step (what names the bottleneck).

    pa_bench.py --repository R --label single --deployments sentiment,embed --texts T --reference ref.json
                --concurrency 1,16,64,128,256 --out part.json --log triton.log

Runs the embedded Triton (trtserve_server.embedded) with the stub's environment (numpy < 2);
tritonclient there reads the statistics. ``--no-check`` for repositories whose models do no work
(the floors).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "serve"), str(ROOT / "contract"), str(ROOT)]

from bench import perf_analyzer  # noqa: E402
from timing import exit_on_sigterm, write_json  # noqa: E402


def log(msg: str) -> None:
    print(f"[pa_bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def statistics(url: str) -> dict[str, dict]:
    """Cumulative Triton statistics per model: requests, executions, and ns in queue / compute."""
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(url)
    stats = client.get_inference_statistics()
    client.close()
    return {s.name: {"requests": s.inference_stats.success.count, "inferences": s.inference_count,
                     "executions": s.execution_count, "request_ns": s.inference_stats.success.ns,
                     "queue_ns": s.inference_stats.queue.ns,
                     "exec_ns": sum(b.compute_input.ns + b.compute_infer.ns + b.compute_output.ns for b in s.batch_stats)}
            for s in stats.model_stats}


def stage_summary(before: dict, after: dict, wall_s: float) -> dict[str, dict]:
    out = {}
    for name, a in after.items():
        d = {k: v - before.get(name, {}).get(k, 0) for k, v in a.items()}
        if not d["requests"]:
            continue
        out[name] = {"requests": d["requests"], "executions": d["executions"],
                     "mean_batch": round(d["inferences"] / max(d["executions"], 1), 2),
                     "request_us": round(d["request_ns"] / d["requests"] / 1e3, 1),
                     "queue_us": round(d["queue_ns"] / d["requests"] / 1e3, 1),
                     "exec_us": round(d["exec_ns"] / max(d["executions"], 1) / 1e3, 1),
                     # instance-seconds executing per second of wall time (divide by instances: busy share)
                     "busy_instances": round(d["exec_ns"] / 1e9 / wall_s, 2)}
    return out


def check(url: str, name: str, reference: dict) -> dict:
    """Served outputs for the reference texts (one batched request and 16 single ones) vs FP32."""
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(url)
    texts, output = reference["texts"], reference["output"]
    ref = np.asarray(reference["values"], dtype=np.float64)

    def infer(batch):
        inp = grpcclient.InferInput("TEXT", [len(batch), 1], "BYTES")
        inp.set_data_from_numpy(np.array([[t.encode()] for t in batch], dtype=np.object_))
        return client.infer(name, [inp]).as_numpy(output).astype(np.float64)

    batched = infer(texts)
    singles = np.concatenate([infer([t]) for t in texts[:16]])
    client.close()
    cos = (batched * ref).sum(-1) / np.linalg.norm(batched, axis=-1) / np.linalg.norm(ref, axis=-1)
    return {"output": output, "texts": len(texts), "batched_max_abs_diff": float(np.abs(batched - ref).max()),
            "single_max_abs_diff": float(np.abs(singles - ref[:16]).max()), "cosine_min": float(cos.min()),
            "argmax_agreement": float((batched.argmax(-1) == ref.argmax(-1)).mean())}


def with_instances(repository: Path, count: int | None, out: Path, rotate: bool = False) -> Path:
    """A copy of ``repository`` whose models run ``count`` instances each (default: as many as now),
    grouped as the build groups them (one-model deployments: a preferred instance and a pool,
    triton_config.preferred_instances) or, ``rotate``, as one group without priorities (what
    Triton's default --rate-limit=off does with them: idle instances take requests in turn).
    Configs through protobuf."""
    import shutil

    sys.path.insert(0, str(ROOT / "build"))
    from trtserve_build.core.pbtxt import read_config, write_config
    from trtserve_build.stages.triton_config import preferred_instances

    shutil.copytree(repository, out)
    for path in out.glob("*/config.pbtxt"):
        config = read_config(path)
        groups = list(config.instance_group)
        total = count or sum(g.count for g in groups)
        preferred = len(groups) > 1 or any(g.HasField("rate_limiter") for g in groups)
        del config.instance_group[:]
        if preferred and not rotate:
            config.instance_group.extend(preferred_instances(config.name, groups[0].kind, total))
        else:
            config.instance_group.add(kind=groups[0].kind, count=total)
        write_config(config, path)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repository", required=True)
    parser.add_argument("--label", required=True)
    parser.add_argument("--deployments", default="sentiment,embed")
    parser.add_argument("--texts", required=True)
    parser.add_argument("--reference", help="reference.json from build_served.py")
    parser.add_argument("--no-check", action="store_true")
    parser.add_argument("--concurrency", default="1,16,64,128,256")
    parser.add_argument("--measurement-ms", type=int, default=2000)
    parser.add_argument("--instances", type=int, help="experiment: every model's instance count (a copy of the repository)")
    parser.add_argument("--rotate", action="store_true",
                        help="experiment: instances in one group, --rate-limit=off (idle instances in turn)")
    parser.add_argument("--protocols", default="grpc",
                        help="perf_analyzer's protocol(s) at each concurrency, side by side: grpc, http or grpc,http")
    parser.add_argument("--server-arg", action="append", default=[],
                        help="experiment: an extra tritonserver option (repeatable), e.g. --grpc-infer-allocation-pool-size=512")
    parser.add_argument("--out", required=True)
    parser.add_argument("--log", required=True)
    args = parser.parse_args(argv)
    exit_on_sigterm()

    from trtserve_server.embedded import EmbeddedServer, Ports

    texts = [t for t in Path(args.texts).read_text().splitlines() if t]
    work = Path(tempfile.mkdtemp(prefix="pa-bench-"))
    input_data = perf_analyzer.write_input_data(texts[:1000], work / "texts.json")
    result: dict = {"label": args.label, "repository": args.repository,
                    "client": "perf_analyzer (C++), async gRPC, closed loop at each concurrency, one review "
                              "snippet per request", "deployments": {}}
    repository = Path(args.repository)
    if args.instances or args.rotate:
        repository = with_instances(repository, args.instances, work / "repository", rotate=args.rotate)
        result["instances"], result["rotate"] = args.instances, args.rotate
    result["protocols"], result["server_args"] = args.protocols.split(","), args.server_arg
    server = EmbeddedServer(repository, Ports.free(), log_path=Path(args.log), extra_args=tuple(args.server_arg),
                            rate_limit="off" if args.rotate else "execution_count")
    started = time.perf_counter()
    try:
        with server:
            models = server.wait_ready(300)
            result["ready_s"] = round(time.perf_counter() - started, 1)
            log(f"{args.label}: ready in {result['ready_s']}s, text models {models}")
            url = server.grpc_url
            reference = json.loads(Path(args.reference).read_text()) if args.reference and not args.no_check else {}
            for name in [d for d in args.deployments.split(",") if d]:
                entry = result["deployments"][name] = {"sweep": []}
                if name in reference:
                    entry["correctness"] = check(url, name, reference[name])
                    log(f"{name} correctness: {entry['correctness']}")
                for c, protocol in ((int(x), p) for x in args.concurrency.split(",") if x for p in result["protocols"]):
                    before = statistics(url)
                    with perf_analyzer.Sampler(root=server.process.pid) as sampler:
                        row = perf_analyzer.run(name, server.http_url if protocol == "http" else url, c, input_data,
                                                measurement_ms=args.measurement_ms, workdir=work, protocol=protocol)
                    row["stages"] = stage_summary(before, statistics(url), sampler.result["wall_s"])
                    row["load"] = sampler.result
                    entry["sweep"].append(row)
                    write_json(args.out, result)
                    log(f"{args.label} {name} c={c} {protocol}: {row.get('infer_per_s', float('nan')):8.0f}/s "
                        f"p50 {row.get('p50_ms') or float('nan'):.3f} ms {row.get('error', '')} "
                        f"cores {sampler.result['cores_busy']} gpu {sampler.result.get('gpu_util_mean_pct')}% "
                        f"batch {[(k, v['mean_batch']) for k, v in row['stages'].items()]} "
                        f"threads {[(t['thread'], t['busy']) for t in sampler.result.get('busiest_threads', [])[:6]]}")
    finally:
        write_json(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
