"""In-process baselines for the served ``sentiment`` ensemble, on the same files the server loads.

  * the tokenizer's own throughput (texts/s, one thread, as the tokenizer model runs it): its ceiling;
  * the raw engine of the served model (TorchEncoder + CUDA graphs from the repository's
    config.pbtxt) on real texts at batch 1..64: texts/s, host inputs and outputs included;
  * one text through tokenizer -> engine -> postprocess in-process: the p50 that the served p50 at
    concurrency 1 is compared with (the ensemble overhead).

Run with the stub's environment (numpy < 2, torch, tokenizers): no transformers needed.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "serve"), str(ROOT / "contract")]

from timing import exit_on_sigterm, summary_ms, write_json  # noqa: E402

from trtserve_backend.postprocess import Classifier  # noqa: E402
from trtserve_backend.tokenize import BucketTokenizer  # noqa: E402
from trtserve_backend.torch_engine import GraphPlan, TorchEncoder  # noqa: E402

ENGINE_BATCHES = (1, 8, 16, 32, 64)


def log(msg: str) -> None:
    print(f"[inprocess {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def read_parameters(config_path: Path) -> dict:
    """The string parameters of a config.pbtxt (parsed by protobuf, not by hand)."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc

    config = text_format.Parse(config_path.read_text(), mc.ModelConfig())
    return {"config": config, **{k: v.string_value for k, v in config.parameters.items()}}


def load_tokenizer(repo: Path, name: str, encoder_inputs) -> BucketTokenizer:
    p = read_parameters(repo / f"{name}_tokenizer" / "config.pbtxt")
    return BucketTokenizer.from_file(str(repo / f"{name}_tokenizer" / "1" / p["tokenizer_file"]),
                                     int(p["max_sequence_length"]), json.loads(p["length_buckets"]),
                                     int(p["pad_token_id"]), encoder_inputs)


def tokenizer_throughput(tok: BucketTokenizer, texts: list[str], seconds: float) -> dict:
    """texts/s when an execution holds 1, 8 or 64 single-text requests (the tokenizer model's shape)."""
    out = {}
    for per_execution in (1, 8, 64):
        count, start, i = 0, time.perf_counter(), 0
        while time.perf_counter() - start < seconds:
            chunk = texts[i:i + per_execution] or texts[:per_execution]
            tok.encode_requests([[t] for t in chunk])
            count += len(chunk)
            i = (i + per_execution) % len(texts)
        rate = count / (time.perf_counter() - start)
        out[f"{per_execution}_requests_per_execution"] = {"texts_per_s": rate}
        log(f"tokenizer, {per_execution:2d} requests per execution: {rate:9.0f} texts/s")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repository", required=True)
    parser.add_argument("--texts", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--name", default="sentiment")
    parser.add_argument("--device", default="cuda", help="cpu: a dry run without a GPU (no CUDA graphs)")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    exit_on_sigterm()

    import torch

    repo = Path(args.repository)
    texts = [t for t in Path(args.texts).read_text().splitlines() if t]
    enc = read_parameters(repo / f"{args.name}_encoder" / "config.pbtxt")
    post = read_parameters(repo / f"{args.name}_postprocess" / "config.pbtxt")
    inputs = [i.name for i in enc["config"].input]
    classify = Classifier(json.loads(post["labels"]))  # once, as the served postprocess does
    tok = load_tokenizer(repo, args.name, inputs)
    seconds = 0.5 if args.quick else 2.0
    result: dict = {"texts": len(texts)}

    lengths = [len(e.ids) for e in tok.tokenizer.encode_batch(texts)]
    buckets = Counter(int(tok.encode([t])[inputs[0]].shape[1]) for t in texts[:500])
    result["token_lengths"] = {"p50": float(np.percentile(lengths, 50)), "p95": float(np.percentile(lengths, 95)),
                               "max": int(max(lengths)), "bucket_share_of_500": dict(sorted(buckets.items()))}
    log(f"token lengths {result['token_lengths']}")
    result["tokenizer"] = tokenizer_throughput(tok, texts, seconds)

    plan = None
    if args.device != "cpu" and json.loads(enc["cuda_graphs"]):
        plan = GraphPlan(tuple(json.loads(enc["cuda_graph_batch_sizes"])),
                         tuple(json.loads(enc["cuda_graph_sequence_lengths"])))
    engine = TorchEncoder.from_file(str(repo / f"{args.name}_encoder" / "1" / enc["torchscript_file"]), inputs,
                                    args.device, plan)
    result["capture_seconds"] = engine.capture()
    result["graphs"] = len(engine.graph_shapes)
    log(f"engine loaded, {len(engine.graph_shapes)} CUDA graphs captured in {engine.capture_seconds:.1f}s")

    def sync():
        if args.device != "cpu":
            torch.cuda.synchronize()

    # Raw engine of the served model on real texts: each batch tokenized as the tokenizer model
    # would for one request of B texts (padded to the bucket of its longest), inputs from host
    # memory, outputs back to host memory, as the served encoder does.
    result["engine"] = {}
    for batch in ENGINE_BATCHES if not args.quick else (1, 8):
        feeds = [tok.encode(texts[i:i + batch]) for i in range(0, len(texts) - batch + 1, batch)][:200]
        for f in feeds[:3]:
            engine.run(f).cpu()
        sync()
        samples = []
        start = time.perf_counter()
        rows = 0
        i = 0
        while time.perf_counter() - start < seconds or len(samples) < 5:
            f = feeds[i % len(feeds)]
            i += 1
            t0 = time.perf_counter()
            engine.run(f).cpu()
            samples.append(time.perf_counter() - t0)
            rows += len(f[inputs[0]])
        rate = rows / (time.perf_counter() - start)
        shapes = Counter(int(f[inputs[0]].shape[1]) for f in feeds)
        result["engine"][str(batch)] = {"texts_per_s": rate, **summary_ms(samples),
                                        "sequence_buckets": dict(sorted(shapes.items()))}
        log(f"engine batch {batch:3d}: {rate:9.0f} texts/s, p50 {result['engine'][str(batch)]['p50_ms']:.3f} ms")
        write_json(args.out, result)

    # One text end to end in-process: the served p50 at concurrency 1 minus this = ensemble overhead.
    samples = []
    for i, text in enumerate(texts[:(60 if args.quick else 1000)]):
        t0 = time.perf_counter()
        feeds = tok.encode([text])
        logits = engine.run(feeds).cpu().numpy()
        classify(logits)
        if i >= 20:
            samples.append(time.perf_counter() - t0)
    result["pipeline_one_text"] = summary_ms(samples)
    log(f"in-process tokenizer+engine+postprocess, one text: {result['pipeline_one_text']}")

    # The same, stage by stage (p50 of each, same texts).
    stage = {"tokenize": [], "engine": [], "postprocess": []}
    for text in texts[:(30 if args.quick else 300)]:
        t0 = time.perf_counter()
        feeds = tok.encode([text])
        t1 = time.perf_counter()
        logits = engine.run(feeds).cpu().numpy()
        t2 = time.perf_counter()
        classify(logits)
        t3 = time.perf_counter()
        stage["tokenize"].append(t1 - t0)
        stage["engine"].append(t2 - t1)
        stage["postprocess"].append(t3 - t2)
    result["pipeline_stages_p50_ms"] = {k: summary_ms(v)["p50_ms"] for k, v in stage.items()}
    log(f"stages p50 ms: {result['pipeline_stages_p50_ms']}")
    write_json(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
