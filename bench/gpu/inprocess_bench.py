"""In-process baselines for the served deployments, on the same files and code the server runs.

For each deployment of the single-topology repository, :class:`trtserve_backend.pipeline.Pipeline`
is built from the model's own config.pbtxt (what the served model's ``initialize`` does), then:

  * the tokenizer's own throughput (texts/s, one thread, one execution of 1/8/64 requests);
  * the raw engine on real texts at batch 1..64 (host inputs and outputs, as served): the engine
    texts/s that the served throughput is compared with;
  * one text through tokenizer -> engine -> postprocess (``Pipeline.run``), p50 and per stage:
    what the served p50 at concurrency 1 is compared with;
  * the same one text with an idle gap before each call (``--gaps-ms``, about what a served
    request spends outside the model at concurrency 1), the caller sleeping or spinning through
    the gap: whether the host makes code slower after its core idled (the served c=1 phases ran
    1.5-2.3x slower than back to back in session 9), apart from anything Triton does.

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

from trtserve_backend.model_config import PythonModelConfig  # noqa: E402
from trtserve_backend.pipeline import PhaseClock, Pipeline  # noqa: E402

ENGINE_BATCHES = (1, 8, 16, 32, 64)


def log(msg: str) -> None:
    print(f"[inprocess {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def model_config(path: Path) -> PythonModelConfig:
    """A config.pbtxt in the JSON form Triton hands to a Python model's ``initialize``."""
    from google.protobuf import json_format, text_format
    from tritonclient.grpc import model_config_pb2 as mc

    config = text_format.Parse(path.read_text(), mc.ModelConfig())
    return PythonModelConfig.from_dict(json.loads(json_format.MessageToJson(config, preserving_proto_field_name=True)))


def tokenizer_throughput(tok, texts: list[str], seconds: float) -> dict:
    out = {}
    for per_execution in (1, 8, 64):
        count, start, i = 0, time.perf_counter(), 0
        while time.perf_counter() - start < seconds:
            chunk = texts[i:i + per_execution] or texts[:per_execution]
            tok.encode_requests([[t] for t in chunk])
            count += len(chunk)
            i = (i + per_execution) % len(texts)
        out[f"{per_execution}_requests_per_execution"] = {"texts_per_s": count / (time.perf_counter() - start)}
    return out


def bench(pipeline: Pipeline, texts: list[str], seconds: float, quick: bool, sync, gaps_ms: list[float]) -> dict:
    tok, engine = pipeline.tokenizer, pipeline.engine
    key = tok.output_names[0]
    result: dict = {}
    lengths = [len(e.ids) for e in tok.tokenizer.encode_batch(texts)]
    buckets = Counter(int(tok.encode([t])[key].shape[1]) for t in texts[:500])
    result["token_lengths"] = {"p50": float(np.percentile(lengths, 50)), "p95": float(np.percentile(lengths, 95)),
                               "max": int(max(lengths)), "bucket_share_of_500": dict(sorted(buckets.items()))}
    result["tokenizer"] = tokenizer_throughput(tok, texts, seconds)
    log(f"tokenizer texts/s {({k: round(v['texts_per_s']) for k, v in result['tokenizer'].items()})}")

    # Raw engine on real texts: each batch tokenized as one request of B texts (padded to the
    # bucket of its longest), host inputs, outputs back to host memory, as served.
    result["engine"] = {}
    for batch in ENGINE_BATCHES if not quick else (1, 8):
        feeds = [tok.encode(texts[i:i + batch]) for i in range(0, len(texts) - batch + 1, batch)][:200]
        for f in feeds[:3]:
            engine.run_requests([f], to_host=True)
        sync()
        samples, rows, i, start = [], 0, 0, time.perf_counter()
        while time.perf_counter() - start < seconds or len(samples) < 5:
            f = feeds[i % len(feeds)]
            i += 1
            t0 = time.perf_counter()
            engine.run_requests([f], to_host=True)
            samples.append(time.perf_counter() - t0)
            rows += len(f[key])
        result["engine"][str(batch)] = {"texts_per_s": rows / (time.perf_counter() - start), **summary_ms(samples)}
        log(f"engine batch {batch:3d}: {result['engine'][str(batch)]['texts_per_s']:9.0f} texts/s, "
            f"p50 {result['engine'][str(batch)]['p50_ms']:.3f} ms")

    # One text end to end (the served model's code path for a one-request execution).
    result["pipeline_one_text"] = one_text(pipeline, texts[:(60 if quick else 1000)])
    stage = {"tokenize": [], "engine": [], "postprocess": []}
    for text in texts[:(30 if quick else 300)]:
        t0 = time.perf_counter()
        feeds = tok.encode_requests([[text]])
        t1 = time.perf_counter()
        out = np.asarray(engine.run_requests(feeds, to_host=True)[0])
        t2 = time.perf_counter()
        pipeline.postprocess(out)
        t3 = time.perf_counter()
        for k, v in (("tokenize", t1 - t0), ("engine", t2 - t1), ("postprocess", t3 - t2)):
            stage[k].append(v)
    result["pipeline_stages_p50_ms"] = {k: summary_ms(v)["p50_ms"] for k, v in stage.items()}
    log(f"one text in-process: {result['pipeline_one_text']['p50_ms']:.3f} ms p50; stages {result['pipeline_stages_p50_ms']}")
    result["pipeline_one_text_after_gap"] = after_gaps(pipeline, texts[:(60 if quick else 400)], gaps_ms)
    return result


def one_text(pipeline: Pipeline, texts: list[str], pause=None) -> dict:
    """``Pipeline.run`` of one text at a time (``pause()`` before each call), the first 20 as warm-up."""
    samples = []
    for i, text in enumerate(texts):
        if pause is not None:
            pause()
        pipeline.clock.start()  # the served model starts its clock the same way (no-op without one)
        t0 = time.perf_counter()
        pipeline.run([[text]])
        if i >= 20:
            samples.append(time.perf_counter() - t0)
    return summary_ms(samples)


def spin(seconds: float) -> None:
    until = time.perf_counter() + seconds
    while time.perf_counter() < until:
        pass


def after_gaps(pipeline: Pipeline, texts: list[str], gaps_ms: list[float]) -> dict:
    """:func:`one_text` after an idle gap, the caller sleeping or spinning through it, and the mean
    time of each phase over every call, the warm-up's too (the served model's own phase clock):
    which phases a gap slows; ``none_0ms`` is the same back to back."""
    out, saved = {}, pipeline.clock
    for gap in [0.0] + [g for g in gaps_ms if g]:
        for how, wait in (("sleep", time.sleep), ("spin", spin)) if gap else (("none", None),):
            key = f"{how}_{gap:g}ms"
            pipeline.clock = clock = PhaseClock()
            out[key] = one_text(pipeline, texts, wait and (lambda: wait(gap / 1000)))
            clock.executions = len(texts)
            out[key]["phase_mean_us"] = clock.means_us()
            log(f"one text after a {gap:g} ms gap ({how}): {out[key]['p50_ms']:.3f} ms p50; {clock.summary()}")
    pipeline.clock = saved
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repository", required=True, help="the single-topology repository (build_served.py)")
    parser.add_argument("--texts", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--deployments", default="sentiment,embed")
    parser.add_argument("--device", default="cuda:0", help="cpu: a dry run without a GPU (no CUDA graphs)")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--gaps-ms", default="1,5", help="idle gaps before one-text calls ('' for none)")
    args = parser.parse_args(argv)
    exit_on_sigterm()

    import torch

    def sync():
        if args.device != "cpu":
            torch.cuda.synchronize()

    repo = Path(args.repository)
    texts = [t for t in Path(args.texts).read_text().splitlines() if t]
    result: dict = {"texts": len(texts), "deployments": {}}
    for name in args.deployments.split(","):
        cfg = model_config(repo / name / "config.pbtxt")
        started = time.perf_counter()
        pipeline = Pipeline.from_config(cfg, str(repo / name / "1"), args.device)
        log(f"{name}: pipeline loaded (CUDA graphs captured) in {time.perf_counter() - started:.1f}s")
        gaps = [float(g) for g in args.gaps_ms.split(",") if g]
        result["deployments"][name] = bench(pipeline, texts, 0.5 if args.quick else 1.5, args.quick, sync, gaps)
        write_json(args.out, result)
        del pipeline
    return 0


if __name__ == "__main__":
    sys.exit(main())
