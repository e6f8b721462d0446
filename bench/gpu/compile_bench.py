"""Engine fusion for BERT-base on the GPU: torch.compile (Inductor) variants at fixed shapes.

The served engine (TorchScript + CUDA graphs, engine_bench.py) runs every GELU, LayerNorm,
residual add and attention as its own kernel: at 256x128, 42% of its GPU time is that unfused
memory-bound work (docs/results/gpu/). Inductor fuses them into a few generated kernels; with
``freezing`` it also folds the weights into constants, which lets it concatenate the Q/K/V
projections into one GEMM. Each variant is compiled for fixed shapes (``dynamic=False``, as the
served engine captures one CUDA graph per bucket) and timed at batch 1 and at the batches that
give the best throughput, against the same model's TorchScript + CUDA graphs engine.

Run with the image's python: ``python3 bench/gpu/compile_bench.py --out compile.json``.
"""
from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[2] / d) for d in ("build", "serve", "contract")]

from timing import exit_on_sigterm, gpu_info, time_gpu, write_json  # noqa: E402

import trtserve_contract as contract  # noqa: E402

NAMES = contract.ENCODER_INPUTS


def log(msg: str) -> None:
    print(f"[compile_bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def feeds(batch: int, seq: int):
    import torch

    g = torch.Generator().manual_seed(batch * 1000 + seq)
    return [torch.randint(1000, 30000, (batch, seq), generator=g).cuda(),
            torch.ones(batch, seq, dtype=torch.int64, device="cuda"),
            torch.zeros(batch, seq, dtype=torch.int64, device="cuda")]


VARIANTS = {
    # name: (torch.compile kwargs, inductor config overrides, autotuned: compiles for minutes per shape)
    "compile reduce-overhead": ({"mode": "reduce-overhead"}, {}, False),
    "compile reduce-overhead + freezing": ({"mode": "reduce-overhead"}, {"freezing": True}, False),
    "compile + freezing + own CUDA graph": ({}, {"freezing": True}, False),
    "compile max-autotune-no-cudagraphs + freezing + own CUDA graph": (
        {"mode": "max-autotune-no-cudagraphs"}, {"freezing": True, "coordinate_descent_tuning": True}, True),
}


def graphed(fn, args):
    """Capture ``fn(*args)`` in a CUDA graph (after warm-up); returns a replay that gives the output."""
    import torch

    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            fn(*args)
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn(*args)

    def replay():
        graph.replay()
        return out

    return replay


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--batches", default="1,128,256")
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--autotune-batches", default="1", help="batches for the max-autotune variants")
    parser.add_argument("--budget-s", type=float, default=400, help="skip variants once this much time is spent")
    args = parser.parse_args(argv)
    exit_on_sigterm()

    import torch
    import torch._inductor.config as inductor_config
    from transformers import BertConfig, BertForSequenceClassification

    from trtserve_build.models.heads import task_module

    started = time.perf_counter()
    batches = [int(b) for b in args.batches.split(",")]
    autotune_batches = [int(b) for b in args.autotune_batches.split(",")]
    result: dict = {"machine": gpu_info(), "torch": torch.__version__, "seq": args.seq,
                    "model": "BERT-base (bert-base-uncased config), random weights, fp16, SDPA attention, "
                             "2-way head; inputs unpadded", "rows": [], "compile_s": {}, "errors": {}}
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(num_labels=2)).eval().cuda().half()
    module = task_module(model, contract.CLASSIFICATION)
    reference = {}
    with torch.no_grad():
        for b in sorted(set(batches + autotune_batches)):
            reference[b] = module(*feeds(b, args.seq)).float()
    for name in [v for v in args.variants.split(",") if v]:
        if time.perf_counter() - started > args.budget_s:
            result["errors"][name] = f"skipped: {time.perf_counter() - started:.0f}s spent"
            continue
        kwargs, overrides, autotuned = VARIANTS[name]
        torch._dynamo.reset()
        saved = {k: getattr(inductor_config, k) for k in overrides}
        try:
            for k, v in overrides.items():
                setattr(inductor_config, k, v)
            compiled = torch.compile(module, dynamic=False, **kwargs)
            own_graph = "own CUDA graph" in name
            for b in (autotune_batches if autotuned else batches):
                if time.perf_counter() - started > args.budget_s:
                    result["errors"][f"{name} {b}x{args.seq}"] = "skipped: time budget"
                    continue
                x = feeds(b, args.seq)
                t0 = time.perf_counter()
                with torch.no_grad():
                    diff = float((compiled(*x).float() - reference[b]).abs().max())
                    if own_graph:
                        fn = graphed(compiled, x)
                    else:  # cudagraph trees: a new step per call, outputs of the last one may be reused
                        def fn(x=x):
                            torch.compiler.cudagraph_mark_step_begin()
                            return compiled(*x)
                    fn()
                torch.cuda.synchronize()
                result["compile_s"][f"{name} {b}x{args.seq}"] = round(time.perf_counter() - t0, 1)
                with torch.no_grad():
                    r = time_gpu(fn, b)
                result["rows"].append({"engine": name, "batch": b, "seq": args.seq, "max_abs_diff_vs_eager": diff, **r})
                log(f"{name:58s} {b:4d}x{args.seq}: p50 {r['p50_ms']:.3f} ms, {r['throughput_per_s']:8.0f} seq/s "
                    f"(compiled in {result['compile_s'][f'{name} {b}x{args.seq}']}s, |diff| {diff:.2e})")
                write_json(args.out, result)
        except Exception as e:  # noqa: BLE001 - one variant failing is a result, not the end of the run
            result["errors"][name] = f"{type(e).__name__}: {str(e)[:400]}"
            log(f"{name} failed: {result['errors'][name]}")
        finally:
            for k, v in saved.items():
                setattr(inductor_config, k, v)
            gc.collect()
            torch.cuda.empty_cache()
    write_json(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
