"""The served ``sentiment`` ensemble over gRPC: correctness, p50/p95 at concurrency 1, a concurrency
sweep to saturation, the batch sizes the dynamic batchers reached, and the time spent in the
tokenizer, the engine and the postprocess (Triton's own statistics, per sweep step).

Starts the embedded Triton (trtserve_server.embedded) on the given repository. Clients are
tritonclient.grpc in several processes (one channel per thread), one text per request unless a
step says otherwise. Run with the stub's environment (numpy < 2), which also holds tritonclient.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "serve"), str(ROOT / "contract")]

from timing import exit_on_sigterm, summary_ms, write_json  # noqa: E402

MODEL = "sentiment"
STAGES = ("sentiment", "sentiment_tokenizer", "sentiment_encoder", "sentiment_postprocess")


def log(msg: str) -> None:
    print(f"[serve_bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def text_input(texts: list[str]):
    import tritonclient.grpc as grpcclient

    data = np.array([[t.encode("utf-8")] for t in texts], dtype=np.object_)
    inp = grpcclient.InferInput("TEXT", list(data.shape), "BYTES")
    inp.set_data_from_numpy(data)
    return inp


# ---- Triton statistics ---------------------------------------------------------------------

def snapshot(url: str) -> dict[str, dict]:
    """Cumulative statistics of every model (protobuf, so no int64-as-string parsing).

    Triton adds an execution's compute time to inference_stats once per request in the batch,
    and once per execution to batch_stats: per-request times come from the first, the time the
    instances were busy from the second.
    """
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(url)
    stats = client.get_inference_statistics()
    client.close()
    out = {}
    for s in stats.model_stats:
        i = s.inference_stats
        out[s.name] = {
            "inferences": s.inference_count, "executions": s.execution_count,
            "success_count": i.success.count, "success_ns": i.success.ns, "queue_ns": i.queue.ns,
            "compute_input_ns": i.compute_input.ns, "compute_infer_ns": i.compute_infer.ns,
            "compute_output_ns": i.compute_output.ns, "failures": i.fail.count,
            "exec_input_ns": sum(b.compute_input.ns for b in s.batch_stats),
            "exec_infer_ns": sum(b.compute_infer.ns for b in s.batch_stats),
            "exec_output_ns": sum(b.compute_output.ns for b in s.batch_stats),
            "batches": {b.batch_size: b.compute_infer.count for b in s.batch_stats},
        }
    return out


def stage_summary(before: dict, after: dict) -> dict[str, dict]:
    """Per model between two snapshots: executions, mean batch, batch histogram, microseconds spent."""
    out = {}
    for name in STAGES:
        a, b = after.get(name), before.get(name, {})
        if a is None:
            continue
        d = {k: a[k] - b.get(k, 0) for k in a if k != "batches"}
        batches = {size: n - b.get("batches", {}).get(size, 0) for size, n in a["batches"].items()}
        batches = {size: n for size, n in sorted(batches.items()) if n}
        requests = max(d["success_count"], 1)
        executions = max(d["executions"], 1)
        out[name] = {
            "requests": d["success_count"], "inferences": d["inferences"], "executions": d["executions"],
            "failures": d["failures"],
            "mean_batch": d["inferences"] / executions if d["executions"] else 0.0,
            "batch_histogram": batches,
            # per request: end to end inside this model, waiting in its queue, being computed
            "request_us": d["success_ns"] / requests / 1e3,
            "queue_us": d["queue_ns"] / requests / 1e3,
            "compute_us_per_request": (d["compute_input_ns"] + d["compute_infer_ns"] + d["compute_output_ns"])
            / requests / 1e3,
            # per execution (one batch): input gathering, the model itself, output scatter
            "compute_input_us_per_exec": d["exec_input_ns"] / executions / 1e3,
            "compute_infer_us_per_exec": d["exec_infer_ns"] / executions / 1e3,
            "compute_output_us_per_exec": d["exec_output_ns"] / executions / 1e3,
        }
    return out


# ---- load ----------------------------------------------------------------------------------

def make_inputs(payload: dict[str, np.ndarray]):
    """tritonclient inputs from {name: array}: BYTES for object arrays, else the array's dtype."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import np_to_triton_dtype

    inputs = []
    for name, array in payload.items():
        dtype = "BYTES" if array.dtype == np.object_ else np_to_triton_dtype(array.dtype)
        inp = grpcclient.InferInput(name, list(array.shape), dtype)
        inp.set_data_from_numpy(array)
        inputs.append(inp)
    return inputs


def text_payloads(texts: list[str], per_request: int, count: int = 512) -> list[dict[str, np.ndarray]]:
    out = []
    for i in range(count):
        batch = [texts[(i * per_request + j) % len(texts)] for j in range(per_request)]
        out.append({"TEXT": np.array([[t.encode("utf-8")] for t in batch], dtype=np.object_)})
    return out


def _client_process(url, model, payloads, threads, start_at, end_at, offset, results):
    import tritonclient.grpc as grpcclient

    counts, errors, latencies, messages = [0] * threads, [0] * threads, [[] for _ in range(threads)], []

    def worker(k: int) -> None:
        client = grpcclient.InferenceServerClient(url)
        i = offset + k * 97
        try:
            client.infer(model, make_inputs(payloads[i % len(payloads)]))  # connect before the clock starts
        except Exception:  # noqa: BLE001 - a full queue at warm-up; the timed loop counts errors
            pass
        while time.time() < start_at:
            time.sleep(0.001)
        while time.time() < end_at:
            payload = payloads[i % len(payloads)]
            i += 1
            t0 = time.perf_counter()
            try:
                client.infer(model, make_inputs(payload))
                latencies[k].append(time.perf_counter() - t0)
                counts[k] += 1
            except Exception as e:  # noqa: BLE001 - counted and reported
                errors[k] += 1
                if len(messages) < 3:
                    messages.append(str(e)[:200])
        client.close()

    pool = [threading.Thread(target=worker, args=(k,)) for k in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    results.put({"requests": sum(counts), "errors": sum(errors), "messages": messages,
                 "latencies": [x for lat in latencies for x in lat]})


def run_load(url: str, payloads: list[dict], concurrency: int, seconds: float, model: str = MODEL) -> dict:
    """``concurrency`` closed-loop clients for ``seconds``, spread over up to 8 processes."""
    ctx = mp.get_context("fork")  # this process holds no CUDA context
    processes = min(concurrency, 8)
    threads = [concurrency // processes + (1 if p < concurrency % processes else 0) for p in range(processes)]
    results = ctx.Queue()
    start_at = time.time() + 1.5
    end_at = start_at + seconds
    procs = [ctx.Process(target=_client_process,
                         args=(url, model, payloads, n, start_at, end_at, 131 * p, results))
             for p, n in enumerate(threads)]
    for p in procs:
        p.start()
    parts = [results.get(timeout=seconds + 120) for _ in procs]
    for p in procs:
        p.join()
    latencies = [x for part in parts for x in part["latencies"]]
    requests = sum(part["requests"] for part in parts)
    per_request = len(next(iter(payloads[0].values())))
    out = {"model": model, "concurrency": concurrency, "texts_per_request": per_request, "seconds": seconds,
           "requests": requests, "errors": sum(part["errors"] for part in parts),
           "error_messages": [m for part in parts for m in part["messages"]][:3],
           "requests_per_s": requests / seconds, "texts_per_s": requests * per_request / seconds}
    if latencies:
        out.update(summary_ms(latencies))
    return out


def encoder_payloads(repo: Path, texts: list[str], per_request: int, count: int = 256) -> list[dict[str, np.ndarray]]:
    """Token tensors as the tokenizer model makes them, for requests straight to the encoder."""
    sys.path.insert(0, str(ROOT / "bench" / "gpu"))
    from inprocess_bench import load_tokenizer, read_parameters

    enc = read_parameters(repo / f"{MODEL}_encoder" / "config.pbtxt")["config"]
    tok = load_tokenizer(repo, MODEL, [i.name for i in enc.input])
    return [tok.encode([texts[(i * per_request + j) % len(texts)] for j in range(per_request)]) for i in range(count)]


# ---- phases --------------------------------------------------------------------------------

def check_correctness(url: str, reference: dict) -> dict:
    """Served probabilities against the FP32 reference of the same weights (one batched request)."""
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(url)
    texts = reference["texts"]
    result = client.infer(MODEL, [text_input(texts)])
    probs = result.as_numpy("PROBABILITIES")
    labels = [x[0].decode() for x in result.as_numpy("LABEL")]
    ref = np.asarray(reference["probabilities"])
    ref_labels = [reference["labels"][i] for i in ref.argmax(-1)]
    singles = [client.infer(MODEL, [text_input([t])]).as_numpy("PROBABILITIES")[0] for t in texts[:16]]
    client.close()

    # All texts at once as concurrent single-text requests: executions then mix length buckets
    # (ragged batches, padded to the longest in the encoder).
    from concurrent.futures import ThreadPoolExecutor

    def one(text):
        c = grpcclient.InferenceServerClient(url)
        try:
            return c.infer(MODEL, [text_input([text])]).as_numpy("PROBABILITIES")[0]
        finally:
            c.close()

    try:
        with ThreadPoolExecutor(32) as pool:
            concurrent = float(np.abs(np.asarray(list(pool.map(one, texts))) - ref).max())
    except Exception as e:  # noqa: BLE001 - e.g. a queue timeout on a slow dry run; reported
        concurrent, error = float("nan"), str(e)[:200]
        log(f"concurrent correctness check failed: {error}")
    return {"texts": len(texts), "batched_max_abs_diff": float(np.abs(probs - ref).max()),
            "single_max_abs_diff": float(np.abs(np.asarray(singles) - ref[:16]).max()),
            "concurrent_max_abs_diff": concurrent,
            "label_agreement": float(np.mean([a == b for a, b in zip(labels, ref_labels)]))}


def latency_c1(url: str, texts: list[str], n: int) -> dict:
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(url)
    for t in texts[:20]:
        client.infer(MODEL, [text_input([t])])
    samples = []
    for t in texts[20:20 + n]:
        t0 = time.perf_counter()
        client.infer(MODEL, [text_input([t])])
        samples.append(time.perf_counter() - t0)
    client.close()
    return summary_ms(samples)


def modified_copy(repo: Path, *, force_cpu: bool = False, instances: dict[str, int] | None = None,
                  encoder_output: str | None = None) -> Path:
    """A copy of the generated repository with configs changed through protobuf, for experiments.

    ``force_cpu``: the encoder instance becomes KIND_CPU (a dry run without a GPU);
    ``instances``: {"tokenizer": 4, ...} instance counts of the ensemble's models;
    ``encoder_output``: the encoder's output_device parameter ("gpu": DLPack to the postprocess).
    """
    sys.path.insert(0, str(ROOT / "build"))
    from tritonclient.grpc import model_config_pb2 as mc

    from trtserve_build.core.pbtxt import read_config, write_config

    copy = Path(tempfile.mkdtemp(prefix="gpu-bench-repo-")) / "repository"
    shutil.copytree(repo, copy)
    changes = {f"{MODEL}_{role}": {"count": n} for role, n in (instances or {}).items()}
    if force_cpu:
        changes.setdefault(f"{MODEL}_encoder", {})["kind"] = mc.ModelInstanceGroup.KIND_CPU
    if encoder_output:
        changes.setdefault(f"{MODEL}_encoder", {})["output_device"] = encoder_output
    for model, change in changes.items():
        path = copy / model / "config.pbtxt"
        config = read_config(path)
        for group in config.instance_group:
            if "kind" in change:
                group.kind = change["kind"]
            if "count" in change:
                group.count = change["count"]
        if "output_device" in change:
            config.parameters["output_device"].string_value = change["output_device"]
        write_config(config, path)
    return copy


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repository", required=True)
    parser.add_argument("--texts", required=True)
    parser.add_argument("--reference", required=True, help="reference.json from build_served.py")
    parser.add_argument("--out", required=True)
    parser.add_argument("--log", required=True, help="Triton's log file")
    parser.add_argument("--concurrency", default="1,2,4,8,16,32,64")
    parser.add_argument("--client-batched", default="16x8,64x8", help="CONCURRENCYxTEXTS steps with several texts per request")
    parser.add_argument("--encoder-direct", default="", help="CONCURRENCYxROWS steps sending token tensors straight "
                                                             "to the encoder model (no tokenizer, no postprocess)")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--c1-requests", type=int, default=1000)
    parser.add_argument("--force-cpu", action="store_true", help="dry run without a GPU (encoder KIND_CPU)")
    parser.add_argument("--instances", default="", help="experiment: ROLE:COUNT,... e.g. tokenizer:4,postprocess:2")
    parser.add_argument("--encoder-output", choices=["cpu", "gpu"], help="experiment: the encoder's output_device")
    parser.add_argument("--skip-c1", action="store_true")
    args = parser.parse_args(argv)
    exit_on_sigterm()

    from trtserve_server.embedded import EmbeddedServer, Ports

    texts = [t for t in Path(args.texts).read_text().splitlines() if t]
    instances = {k: int(v) for k, v in (item.split(":") for item in args.instances.split(",") if item)}
    repo = Path(args.repository)
    if args.force_cpu or instances or args.encoder_output:
        repo = modified_copy(repo, force_cpu=args.force_cpu, instances=instances, encoder_output=args.encoder_output)
    result: dict = {"instances": instances, "encoder_output": args.encoder_output or "as generated", "clients": "tritonclient.grpc, one channel per thread, threads spread over up to 8 processes; "
                               "closed loop; one review snippet per request unless texts_per_request says otherwise"}
    server = EmbeddedServer(repo, Ports.free(), log_path=Path(args.log))
    started = time.perf_counter()
    try:
        with server:
            server.wait_ready(300)
            result["ready_seconds"] = round(time.perf_counter() - started, 1)
            log(f"server ready in {result['ready_seconds']}s")
            url = server.grpc_url
            result["correctness"] = check_correctness(url, json.loads(Path(args.reference).read_text()))
            log(f"correctness vs FP32 reference: {result['correctness']}")
            write_json(args.out, result)

            if not args.skip_c1:
                before = snapshot(url)
                result["c1"] = latency_c1(url, texts, args.c1_requests)
                result["c1"]["stages"] = stage_summary(before, snapshot(url))
                log(f"concurrency 1: p50 {result['c1']['p50_ms']:.3f} ms, p95 {result['c1']['p95_ms']:.3f} ms")

            result["sweep"] = []
            steps = [(MODEL, int(c), 1) for c in args.concurrency.split(",") if c]
            steps += [(MODEL, *(int(x) for x in item.split("x"))) for item in args.client_batched.split(",") if item]
            steps += [(f"{MODEL}_encoder", *(int(x) for x in item.split("x")))
                      for item in args.encoder_direct.split(",") if item]
            for model, concurrency, per_request in steps:
                payloads = (text_payloads(texts, per_request) if model == MODEL
                            else encoder_payloads(repo, texts, per_request))
                before, window = snapshot(url), time.perf_counter()
                row = run_load(url, payloads, concurrency, args.seconds, model)
                row["stages"] = stage_summary(before, snapshot(url))
                # Triton counts everything between the snapshots: warm-up calls and the tail too.
                row["stats_window_s"] = time.perf_counter() - window
                result["sweep"].append(row)
                write_json(args.out, result)  # partial results survive a timeout
                enc = row["stages"].get(f"{MODEL}_encoder", {})
                tok = row["stages"].get(f"{MODEL}_tokenizer", {})
                log(f"{model} c={concurrency:3d} x{per_request}: {row['texts_per_s']:8.0f} texts/s, "
                    f"p50 {row.get('p50_ms', float('nan')):7.2f} ms, errors {row['errors']}, "
                    f"encoder batch {enc.get('mean_batch', 0):5.1f}, tokenizer batch {tok.get('mean_batch', 0):5.1f}")
    finally:
        write_json(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
