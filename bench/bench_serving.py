"""`make bench`: the served `sentiment` deployment against the same model in-process, side by side.

Measured in one run on one machine, on real review snippets:
  * served over gRPC: throughput with 8 concurrent clients, p50/p95 at concurrency 1, by the
    Python client interleaved with the in-process subjects, and by perf_analyzer (Triton's C++
    client, an outside process; bench/perf_analyzer_setup.sh finds or prepares it) after them;
  * the Hugging Face `pipeline` (PyTorch) in-process, one text per call;
  * raw ONNX Runtime in-process on the exported graph (fast tokenizer + session.run + softmax).
Targets (issue #13; perf_analyzer's numbers when it ran, else the Python client's): served
throughput >= 2x the pipeline's; served p50 at concurrency 1 <= raw ONNX Runtime p50 + 1 ms.
Prints a table and writes results/bench_serving.json.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Sequence

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO_ROOT = Path(__file__).resolve().parents[1]


def percentile(samples_ms: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(samples_ms), q))


def latency_summary(samples_ms: list[float]) -> dict[str, float]:
    return {"p50_ms": percentile(samples_ms, 50), "p95_ms": percentile(samples_ms, 95), "n": len(samples_ms)}


def time_calls(fn, texts: list[str]) -> list[float]:
    samples = []
    for t in texts:
        start = time.perf_counter()
        fn(t)
        samples.append((time.perf_counter() - start) * 1000)
    return samples


def sequential_throughput(fn, texts: list[str], seconds: float) -> tuple[int, float]:
    """One caller, back to back, for `seconds`: (texts done, elapsed seconds)."""
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        fn(texts[count % len(texts)])
        count += 1
    return count, time.perf_counter() - start


def grpc_text_caller(url: str):
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(url)

    def call(text: str) -> None:
        inp = grpcclient.InferInput("TEXT", [1, 1], "BYTES")
        inp.set_data_from_numpy(np.array([[text.encode()]], dtype=np.object_))
        client.infer("sentiment", [inp])

    return call, client


def served_throughput(url: str, texts: list[str], concurrency: int, seconds: float) -> tuple[int, float, int]:
    """`concurrency` closed-loop clients, each with its own gRPC channel: (done, elapsed, errors)."""
    counts = [0] * concurrency
    errors = [0] * concurrency
    stop = threading.Event()

    def worker(i: int) -> None:
        call, client = grpc_text_caller(url)
        k = i
        while not stop.is_set():
            try:
                call(texts[k % len(texts)])
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
    return sum(counts), time.perf_counter() - start, sum(errors)


def engine_model(repository: Path, deployment: str = "sentiment") -> str:
    """The model that runs the engine: the ensemble's encoder, or the one model (single topology)."""
    encoder = f"{deployment}_encoder"
    return encoder if (Path(repository) / encoder).is_dir() else deployment


def encoder_batch_stats(grpc_url: str, model: str = "sentiment_encoder") -> dict[str, float]:
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(grpc_url)
    stats = client.get_inference_statistics(model, as_json=True)["model_stats"][0]
    client.close()
    return {"inferences": int(stats["inference_count"]), "executions": int(stats["execution_count"])}


def step_stats(grpc_url: str, deployment: str = "sentiment") -> dict[str, dict]:
    """Statistics of the deployment's models: the one model, or the ensemble and its steps."""
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(grpc_url)
    stats = client.get_inference_statistics("", as_json=True)["model_stats"]
    client.close()
    return {m["name"]: m["inference_stats"] for m in stats
            if m["name"] == deployment or m["name"].startswith(f"{deployment}_")}


def per_request_us(after: dict, before: dict) -> dict[str, dict[str, float]]:
    """Average microseconds per request in each step between two statistics snapshots."""
    out = {}
    for name in after:
        a, b = after[name], before.get(name, {})
        n = int(a["success"].get("count", 0)) - int(b.get("success", {}).get("count", 0))
        if n <= 0:
            continue

        def us(key: str) -> float:
            return (int(a[key].get("ns", 0)) - int(b.get(key, {}).get("ns", 0))) / n / 1000

        out[name] = {k: us(k) for k in ("success", "queue", "compute_input", "compute_infer", "compute_output")}
    return out


def add_step_times(acc: dict[str, dict[str, list[float]]], after: dict, before: dict) -> None:
    """Append one phase's per-step microseconds per request (:func:`per_request_us`) to ``acc``."""
    for step, values in per_request_us(after, before).items():
        for key, value in values.items():
            acc.setdefault(step, {}).setdefault(key, []).append(value)


def mean_step_times(acc: dict[str, dict[str, list[float]]]) -> dict[str, dict[str, float]]:
    return {step: {k: float(np.mean(v)) for k, v in values.items()} for step, values in acc.items()}


def pipeline_caller(checkpoint: str):
    from transformers import pipeline

    clf = pipeline("text-classification", model=checkpoint, device=-1)
    return lambda text: clf(text)


def onnxruntime_caller(onnx_path: Path, tokenizer_path: Path, max_len: int, labels: Sequence[str]):
    """Fast tokenizer + session.run + softmax: the served work without the server."""
    import onnxruntime as ort
    from tokenizers import Tokenizer

    from trtserve_backend.postprocess import Classifier

    tok = Tokenizer.from_file(str(tokenizer_path))
    tok.no_padding()
    tok.enable_truncation(max_length=max_len)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    classify = Classifier(labels)  # once, as the served postprocess does

    def call(text: str):
        enc = tok.encode(text)
        feeds = {"input_ids": np.array([enc.ids], dtype=np.int64),
                 "attention_mask": np.array([enc.attention_mask], dtype=np.int64),
                 "token_type_ids": np.array([enc.type_ids], dtype=np.int64)}
        logits = session.run(None, {n: feeds[n] for n in names})[0]
        return classify(logits)

    return call


def one_model_pipeline(repository: Path, deployment: str = "sentiment"):
    """The served one model's own code in this process (the ``Pipeline`` built from its generated
    config.pbtxt, as the model's ``initialize`` builds it), or None for an ensemble. Served c=1
    minus the do-nothing floor, against this, is what the server adds beyond Triton's own hop.
    Where the model has a preferred instance, built as that one (the instance a lone request runs
    on, with its solo session: no other instance runs here)."""
    from google.protobuf.json_format import MessageToDict

    from trtserve_backend.model_config import PythonModelConfig
    from trtserve_backend.parameters import hot_group
    from trtserve_backend.pipeline import Pipeline
    from trtserve_build.core.pbtxt import read_config

    config = read_config(Path(repository) / deployment / "config.pbtxt")
    if config.backend != "python" or engine_model(Path(repository), deployment) != deployment:
        return None
    cfg = PythonModelConfig.from_dict(MessageToDict(config, preserving_proto_field_name=True))
    hot = any(group.name == hot_group(deployment) for group in config.instance_group)
    pipeline = Pipeline.from_config(cfg, str(Path(repository) / deployment / "1"), hot=hot)
    return pipeline  # one text: pipeline.run([[text]])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repository", default=str(REPO_ROOT / "model_repository" / "cpu"))
    parser.add_argument("--requests", type=int, default=300, help="sequential requests per subject for latency")
    parser.add_argument("--seconds", type=float, default=20.0, help="throughput time per subject (all rounds)")
    parser.add_argument("--rounds", type=int, default=5,
                        help="subjects are measured in interleaved rounds so load drift hits all alike")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--output", default=str(REPO_ROOT / "results" / "bench_serving.json"))
    parser.add_argument("--no-perf-analyzer", action="store_true", help="only the Python client")
    parser.add_argument("--no-floor", action="store_true",
                        help="skip the do-nothing ensemble (bench/ensemble_floor.py) latency row")
    args = parser.parse_args(argv)

    from trtserve_build.data.datasets import corpus_texts
    from trtserve_build.core.paths import export_dir
    from trtserve_build.core.records import ExportManifest
    from trtserve_build.core.host import cpu_model
    from trtserve_build.core.spec import load_spec
    from trtserve_server.embedded import EmbeddedServer, Ports

    from bench.ensemble_floor import write_floor_repository

    spec = load_spec(REPO_ROOT / "deployments" / "sentiment.toml")
    artifacts = export_dir(spec)
    manifest = ExportManifest.read(artifacts)
    texts = corpus_texts()[-2000:]  # real review snippets
    per_round = max(1, args.requests // args.rounds)
    seconds = args.seconds / args.rounds

    log = REPO_ROOT / "results" / "bench_triton.log"
    log.parent.mkdir(exist_ok=True)
    server = EmbeddedServer(Path(args.repository), Ports.free(), log_path=log)
    floor = None
    if not args.no_floor:
        floor_repo = write_floor_repository(Path(args.repository), REPO_ROOT / "results" / "floor_repository")
        floor = EmbeddedServer(floor_repo, Ports.free(), log_path=REPO_ROOT / "results" / "bench_floor_triton.log")
    engine = engine_model(Path(args.repository))
    with server, (floor or contextlib.nullcontext()):
        server.wait_ready(180)
        served_call, served_client = grpc_text_caller(server.grpc_url)
        callers = {
            "served": served_call,
            "pipeline": pipeline_caller(manifest.checkpoint),
            "onnxruntime": onnxruntime_caller(artifacts / "model.onnx", artifacts / "tokenizer.json",
                                              spec.model.max_sequence_length, spec.model.labels),
        }
        in_process = one_model_pipeline(Path(args.repository))
        if in_process is not None:
            callers["one_model"] = lambda text: in_process.run([[text]])
        if floor is not None:
            floor.wait_ready(180)
            callers["floor"], floor_client = grpc_text_caller(floor.grpc_url)
        latency = {name: [] for name in callers}
        done = {name: [0, 0.0] for name in callers}
        rounds_tp = {name: [] for name in callers}
        errors = 0
        batched = [0, 0]  # encoder inferences, executions during the throughput phases
        c1_steps: dict[str, dict[str, list[float]]] = {}  # Triton statistics of the served c=1 phases
        for name, call in callers.items():
            time_calls(call, texts[:10])  # warm-up
        for r in range(args.rounds):
            print(f"round {r + 1}/{args.rounds}", file=sys.stderr)
            chunk = texts[r * per_round:(r + 1) * per_round]
            for name, call in callers.items():
                before = step_stats(server.grpc_url) if name == "served" else None
                latency[name] += time_calls(call, chunk)
                if before is not None:
                    add_step_times(c1_steps, step_stats(server.grpc_url), before)
                if name in ("floor", "one_model"):  # latency only
                    continue
                if name == "served":
                    before = encoder_batch_stats(server.grpc_url, engine)
                    n, elapsed, err = served_throughput(server.grpc_url, texts, args.concurrency, seconds)
                    after = encoder_batch_stats(server.grpc_url, engine)
                    errors += err
                    batched[0] += after["inferences"] - before["inferences"]
                    batched[1] += after["executions"] - before["executions"]
                else:
                    n, elapsed = sequential_throughput(call, texts, seconds)
                done[name][0] += n
                done[name][1] += elapsed
                rounds_tp[name].append(round(n / elapsed, 1))
        served_client.close()
        if floor is not None:
            floor_client.close()
        outside = outside_client(server, floor, texts, args)

    results: dict[str, object] = {
        "machine": {"cpus": os.cpu_count(), "processor": cpu_model() or platform.processor() or platform.machine(),
                    "python": platform.python_version()},
        "texts": "review snippets (vaderSentiment movieReviewSnippets), one text per request",
        "checkpoint": str(manifest.checkpoint),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "rounds": args.rounds,
    }
    for name in callers:
        results[name] = latency_summary(latency[name])
        if rounds_tp[name]:
            results[name].update(texts_per_s=done[name][0] / done[name][1], texts_per_s_by_round=rounds_tp[name])
    results["served"].update(concurrency=args.concurrency, errors=errors, engine_model=engine,
                             encoder_mean_batch=batched[0] / max(batched[1], 1),
                             c1_us_per_request_by_step=mean_step_times(c1_steps))
    results.update(outside)
    pa = outside.get("perf_analyzer", {})
    client = "perf_analyzer" if "c1" in pa and "throughput" in pa else "python client"
    served_tps = pa["throughput"]["infer_per_s"] if client == "perf_analyzer" else results["served"]["texts_per_s"]
    served_p50 = pa["c1"]["p50_ms"] if client == "perf_analyzer" else results["served"]["p50_ms"]
    ratio = served_tps / results["pipeline"]["texts_per_s"]
    overhead = served_p50 - results["onnxruntime"]["p50_ms"]
    results["targets"] = {
        "throughput_vs_pipeline": {"value": ratio, "target": ">= 2.0", "met": ratio >= 2.0, "client": client},
        "served_p50_minus_onnxruntime_p50_ms": {"value": overhead, "target": "<= 1.0", "met": overhead <= 1.0,
                                                "client": client},
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(results, indent=2) + "\n")
    print_table(results)
    return 0


def outside_client(server, floor, texts: list[str], args) -> dict:
    """perf_analyzer against the served model (c=1 and c=``args.concurrency``) and the floor (c=1)."""
    import tempfile

    from bench import perf_analyzer

    pa = perf_analyzer.command()
    if not pa or args.no_perf_analyzer:
        return {"perf_analyzer": {"skipped": "no perf_analyzer here (bench/perf_analyzer_setup.sh)"}}
    work = Path(tempfile.mkdtemp(prefix="bench-pa-"))  # under /tmp: a container sees it too
    data = perf_analyzer.write_input_data(texts[:1000], work / "texts.json")
    out = {"command": " ".join(pa)}
    print("perf_analyzer: served c=1, c=%d; floor c=1" % args.concurrency, file=sys.stderr)
    for key, url, c in (("c1", server.grpc_url, 1), ("throughput", server.grpc_url, args.concurrency),
                        ("floor_c1", floor.grpc_url if floor else None, 1)):
        if url:
            with perf_analyzer.Sampler(gpu=False, root=server.process.pid) as sampler:
                out[key] = perf_analyzer.run("sentiment", url, c, data, measurement_ms=4000, pa=pa, workdir=work)
            out[key]["load"] = sampler.result
    return {"perf_analyzer": out}


def print_table(r: dict) -> None:
    rows = [("served (Triton, gRPC, Python client)", "served"), ("  same models doing nothing", "floor"),
            ("  the one model's code in-process", "one_model"),
            ("HF pipeline (PyTorch, in-process)", "pipeline"), ("raw ONNX Runtime (in-process)", "onnxruntime")]
    print(f"\nsentiment on {r['machine']['cpus']} CPU cores ({r['machine']['processor']}), {r['date']}, "
          f"{r['rounds']} interleaved rounds")
    print(f"| {'':36} | {'p50 ms (c=1)':>12} | {'p95 ms (c=1)':>12} | {'texts/s':>8} |")
    print(f"|{'-' * 38}|{'-' * 14}|{'-' * 14}|{'-' * 10}|")
    for label, key in rows:
        if key not in r:
            continue
        x = r[key]
        tps = f"{x['texts_per_s']:8.1f}" if "texts_per_s" in x else f"{'-':>8}"
        print(f"| {label:36} | {x['p50_ms']:12.2f} | {x['p95_ms']:12.2f} | {tps} |")
    s = r["served"]
    print(f"\nserved texts/s: {s['concurrency']} concurrent gRPC clients, one text per request, {s['errors']} errors, "
          f"mean encoder batch {s['encoder_mean_batch']:.2f}; in-process rows: one caller, one text per call")
    for key in ("served", "pipeline", "onnxruntime"):
        print(f"  texts/s by round, {key}: {r[key]['texts_per_s_by_round']}")
    steps = s.get("c1_us_per_request_by_step", {})
    if steps:
        parts = ", ".join(f"{name.split('_')[-1]} {v['success'] / 1000:.2f}" for name, v in steps.items()
                          if name != "sentiment")
        print(f"served c=1, Triton statistics, mean ms per request: {parts or 'one model'}; whole deployment "
              f"{steps['sentiment']['success'] / 1000:.2f} (the rest of the client p50 is gRPC and the client)")
    if "floor" in r and "one_model" in r:
        print(f"served c=1 p50 - floor = {r['served']['p50_ms'] - r['floor']['p50_ms']:.2f} ms against the one model's "
              f"Pipeline.run in-process {r['one_model']['p50_ms']:.2f} ms (Python client)")
    if "floor" in r:
        print(f"models doing nothing (bench/ensemble_floor.py): Triton + the topology's Python hops + gRPC at c=1 cost "
              f"{r['floor']['p50_ms']:.2f} ms p50 on this machine before any work")
    pa = r.get("perf_analyzer", {})
    if "c1" in pa:
        tp, floor = pa.get("throughput", {}), pa.get("floor_c1", {})
        print(f"perf_analyzer (outside C++ client): served c=1 p50 {pa['c1'].get('p50_ms', float('nan')):.2f} ms, "
              f"p95 {pa['c1'].get('p95_ms', float('nan')):.2f} ms; {tp.get('concurrency')} concurrent: "
              f"{tp.get('infer_per_s', float('nan')):.1f} texts/s (p50 {tp.get('p50_ms', float('nan')):.2f} ms); floor c=1 "
              f"p50 {floor.get('p50_ms', float('nan')):.2f} ms {pa['c1'].get('error', '')}{tp.get('error', '')}")
    else:
        print(f"perf_analyzer: {pa.get('skipped', 'not run')}")
    for name, t in r["targets"].items():
        print(f"{name} ({t['client']}): {t['value']:.2f} (target {t['target']}) -> {'MET' if t['met'] else 'MISSED'}")


if __name__ == "__main__":
    sys.exit(main())
