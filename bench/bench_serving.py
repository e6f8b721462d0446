"""`make bench`: the served `sentiment` ensemble against the same model in-process, side by side.

Measured in one run on one machine, on real review snippets:
  * served over gRPC: throughput with 8 concurrent clients, p50/p95 at concurrency 1;
  * the Hugging Face `pipeline` (PyTorch) in-process, one text per call;
  * raw ONNX Runtime in-process on the exported graph (fast tokenizer + session.run + softmax).
Targets (issue #2): served throughput >= 1.5x the pipeline's; served p50 at concurrency 1
<= raw ONNX Runtime p50 + 3 ms. Prints a table and writes results/bench_serving.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO_ROOT = Path(__file__).resolve().parents[1]


def percentile(samples_ms: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(samples_ms), q))


def latency_summary(samples_ms: list[float]) -> dict[str, float]:
    return {"p50_ms": percentile(samples_ms, 50), "p95_ms": percentile(samples_ms, 95), "n": len(samples_ms)}


def time_calls(fn, texts: list[str], warmup: int = 10) -> list[float]:
    for t in texts[:warmup]:
        fn(t)
    samples = []
    for t in texts:
        start = time.perf_counter()
        fn(t)
        samples.append((time.perf_counter() - start) * 1000)
    return samples


def latency_and_throughput(fn, texts: list[str], seconds: float) -> dict[str, float]:
    """Sequential in-process calls: latency over `texts`, then texts/s for `seconds`."""
    out = latency_summary(time_calls(fn, texts))
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        fn(texts[count % len(texts)])
        count += 1
    out["texts_per_s"] = count / (time.perf_counter() - start)
    return out


def served_latency(url: str, texts: list[str]) -> dict[str, float]:
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(url)

    def call(text: str) -> None:
        inp = grpcclient.InferInput("TEXT", [1, 1], "BYTES")
        inp.set_data_from_numpy(np.array([[text.encode()]], dtype=np.object_))
        client.infer("sentiment", [inp])

    out = latency_summary(time_calls(call, texts))
    client.close()
    return out


def served_throughput(url: str, texts: list[str], concurrency: int, seconds: float) -> dict[str, float]:
    """`concurrency` closed-loop clients, each with its own gRPC channel, for `seconds`."""
    import tritonclient.grpc as grpcclient

    counts = [0] * concurrency
    errors = [0] * concurrency
    stop = threading.Event()

    def worker(i: int) -> None:
        client = grpcclient.InferenceServerClient(url)
        k = i
        while not stop.is_set():
            inp = grpcclient.InferInput("TEXT", [1, 1], "BYTES")
            inp.set_data_from_numpy(np.array([[texts[k % len(texts)].encode()]], dtype=np.object_))
            try:
                client.infer("sentiment", [inp])
                counts[i] += 1
            except Exception:  # noqa: BLE001 - counted, reported
                errors[i] += 1
            k += concurrency
        client.close()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(concurrency)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    return {"texts_per_s": sum(counts) / elapsed, "requests": sum(counts), "errors": sum(errors),
            "concurrency": concurrency, "seconds": elapsed}


def encoder_batch_stats(http_url: str) -> dict[str, float]:
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(http_url)
    stats = client.get_inference_statistics("sentiment_encoder")["model_stats"][0]
    client.close()
    inferences, executions = int(stats["inference_count"]), int(stats["execution_count"])
    return {"inferences": inferences, "executions": executions,
            "mean_batch": inferences / executions if executions else 0.0}


def pipeline_bench(checkpoint: str, texts: list[str], seconds: float) -> dict[str, float]:
    from transformers import pipeline

    clf = pipeline("text-classification", model=checkpoint, device=-1)
    return latency_and_throughput(clf, texts, seconds)


def onnxruntime_bench(onnx_path: Path, tokenizer_path: Path, max_len: int, texts: list[str], seconds: float):
    import onnxruntime as ort
    from tokenizers import Tokenizer

    from trtserve_backend.postprocess import classify

    tok = Tokenizer.from_file(str(tokenizer_path))
    tok.no_padding()
    tok.enable_truncation(max_length=max_len)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]

    def call(text: str):
        enc = tok.encode(text)
        feeds = {"input_ids": np.array([enc.ids], dtype=np.int64),
                 "attention_mask": np.array([enc.attention_mask], dtype=np.int64),
                 "token_type_ids": np.array([enc.type_ids], dtype=np.int64)}
        logits = session.run(None, {n: feeds[n] for n in names})[0]
        return classify(logits, ["negative", "positive"])

    return latency_and_throughput(call, texts, seconds)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repository", default=str(REPO_ROOT / "model_repository" / "cpu"))
    parser.add_argument("--requests", type=int, default=300, help="sequential requests for latency")
    parser.add_argument("--seconds", type=float, default=20.0, help="duration of each throughput run")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--output", default=str(REPO_ROOT / "results" / "bench_serving.json"))
    args = parser.parse_args(argv)

    from trtserve_build.data import corpus_texts
    from trtserve_build.export import ExportManifest, export_dir
    from trtserve_build.spec import load_spec
    from trtserve_server.embedded import EmbeddedServer, Ports

    spec = load_spec(REPO_ROOT / "deployments" / "sentiment.toml")
    artifacts = export_dir(spec)
    manifest = ExportManifest.read(artifacts)
    texts = corpus_texts()[-2000:]  # real review snippets
    latency_texts = texts[: args.requests]
    results: dict[str, object] = {
        "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                    "python": platform.python_version()},
        "texts": "review snippets (vaderSentiment movieReviewSnippets), one text per request",
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }

    log = REPO_ROOT / "results" / "bench_triton.log"
    log.parent.mkdir(exist_ok=True)
    server = EmbeddedServer(Path(args.repository), Ports.free(), log_path=log)
    with server:
        server.wait_ready(180)
        print("measuring: served, concurrency 1 ...", file=sys.stderr)
        results["served_c1"] = served_latency(server.grpc_url, latency_texts)
        print(f"measuring: served, {args.concurrency} concurrent clients for {args.seconds:.0f}s ...", file=sys.stderr)
        before = encoder_batch_stats(server.http_url)
        results["served_throughput"] = served_throughput(server.grpc_url, texts, args.concurrency, args.seconds)
        after = encoder_batch_stats(server.http_url)
        executions = after["executions"] - before["executions"]
        results["served_throughput"]["encoder_mean_batch"] = (
            (after["inferences"] - before["inferences"]) / executions if executions else 0.0)
    print("measuring: Hugging Face pipeline (PyTorch) in-process ...", file=sys.stderr)
    results["pipeline"] = pipeline_bench(manifest.checkpoint, latency_texts, args.seconds)
    print("measuring: raw ONNX Runtime in-process ...", file=sys.stderr)
    results["onnxruntime"] = onnxruntime_bench(artifacts / "model.onnx", artifacts / "tokenizer.json",
                                               spec.model.max_sequence_length, latency_texts, args.seconds)

    served_tp = results["served_throughput"]["texts_per_s"]
    ratio = served_tp / results["pipeline"]["texts_per_s"]
    overhead = results["served_c1"]["p50_ms"] - results["onnxruntime"]["p50_ms"]
    results["targets"] = {
        "throughput_vs_pipeline": {"value": ratio, "target": ">= 1.5", "met": ratio >= 1.5},
        "served_p50_minus_onnxruntime_p50_ms": {"value": overhead, "target": "<= 3.0", "met": overhead <= 3.0},
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(results, indent=2) + "\n")
    print_table(results)
    return 0


def print_table(r: dict) -> None:
    rows = [
        ("served (Triton ensemble, gRPC)", r["served_c1"], r["served_throughput"]["texts_per_s"]),
        ("HF pipeline (PyTorch, in-process)", r["pipeline"], r["pipeline"]["texts_per_s"]),
        ("raw ONNX Runtime (in-process)", r["onnxruntime"], r["onnxruntime"]["texts_per_s"]),
    ]
    print(f"\nsentiment on {r['machine']['cpus']} CPU cores, {r['date']}")
    print(f"| {'':36} | {'p50 ms (c=1)':>12} | {'p95 ms (c=1)':>12} | {'texts/s':>8} |")
    print(f"|{'-' * 38}|{'-' * 14}|{'-' * 14}|{'-' * 10}|")
    for name, lat, tp in rows:
        print(f"| {name:36} | {lat['p50_ms']:12.2f} | {lat['p95_ms']:12.2f} | {tp:8.1f} |")
    st = r["served_throughput"]
    print(f"\nserved throughput: {st['concurrency']} concurrent clients, {st['requests']} requests, "
          f"{st['errors']} errors, mean encoder batch {st['encoder_mean_batch']:.2f}; "
          "in-process rows: one text per call, sequential")
    for name, t in r["targets"].items():
        print(f"{name}: {t['value']:.2f} (target {t['target']}) -> {'MET' if t['met'] else 'MISSED'}")


if __name__ == "__main__":
    sys.exit(main())
