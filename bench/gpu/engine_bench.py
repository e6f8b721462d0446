"""Raw engine on the GPU: BERT-base (from its config, random weights) in-process, side by side.

Rows: Hugging Face PyTorch eager FP32 and FP16 (transformers' default attention), and the torch
backend's engine (trtserve_build.stages.torchscript + trtserve_backend.torch_engine.TorchEncoder, the
code the served encoder runs) in fp16 and hybrid, with and without CUDA graphs. Shapes: batch
1/8/32 x sequence 128/384, plus larger batches at 128 to find the best throughput. Also the
fidelity of fp16/hybrid against FP32 (mean-pooled embeddings and logits, random padded inputs).

Run with the image's python (transformers there): ``python3 bench/gpu/engine_bench.py --out x.json``.
"""
from __future__ import annotations

import argparse
import copy
import gc
import sys
import time
from pathlib import Path

import numpy as np

sys.path[:0] = [str(Path(__file__).resolve().parents[2] / d) for d in ("build", "serve", "contract")]

from timing import exit_on_sigterm, gpu_info, time_gpu, write_json  # noqa: E402

import trtserve_contract as contract  # noqa: E402
from trtserve_backend.torch_engine import GraphPlan, TorchEncoder  # noqa: E402
from trtserve_build.models.heads import task_module  # noqa: E402
from trtserve_build.stages import torchscript as ts  # noqa: E402

NAMES = contract.ENCODER_INPUTS
SHAPES = [(1, 128), (8, 128), (32, 128), (1, 384), (8, 384), (32, 384)]
BEST_BATCHES = [64, 128, 256, 512]


def log(msg: str) -> None:
    print(f"[engine_bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def random_feeds(batch: int, seq: int, device, seed: int = 0, padded: bool = False):
    import torch

    g = torch.Generator().manual_seed(seed + batch * 1000 + seq)
    ids = torch.randint(1000, 30000, (batch, seq), generator=g)
    mask = torch.ones(batch, seq, dtype=torch.int64)
    if padded:
        for row, length in enumerate(torch.randint(2, seq + 1, (batch,), generator=g).tolist()):
            mask[row, length:] = 0
    return {contract.INPUT_IDS: (ids * mask).to(device), contract.ATTENTION_MASK: mask.to(device),
            contract.TOKEN_TYPE_IDS: torch.zeros(batch, seq, dtype=torch.int64, device=device)}


def hf_rows(model, label: str, shapes) -> list[dict]:
    import torch

    module = task_module(model, contract.CLASSIFICATION)
    rows = []
    for batch, seq in shapes:
        feeds = random_feeds(batch, seq, "cuda")
        args = [feeds[n] for n in NAMES]

        def call():
            with torch.no_grad():
                return module(*args)

        r = time_gpu(call, batch)
        rows.append({"engine": label, "batch": batch, "seq": seq, **r})
        log(f"{label:28s} {batch:4d}x{seq:<4d} p50 {r['p50_ms']:8.3f} ms  {r['throughput_per_s']:9.0f} seq/s")
    return rows


def engine_rows(encoder, label: str, shapes, padded: bool = False) -> list[dict]:
    """``padded``: rows of random lengths (an AOTInductor engine runs its masked program)."""
    rows = []
    for batch, seq in shapes:
        feeds = random_feeds(batch, seq, "cuda", padded=padded)
        r = time_gpu(lambda: encoder.run(feeds, full_rows=not padded), batch)
        rows.append({"engine": label, "batch": batch, "seq": seq, **r})
        log(f"{label:28s} {batch:4d}x{seq:<4d} p50 {r['p50_ms']:8.3f} ms  {r['throughput_per_s']:9.0f} seq/s")
    return rows


def kernel_breakdown(module, batch: int, seq: int, iters: int = 3) -> dict:
    """GPU time per forward by kernel category (profiled without graphs: same kernels, no gaps;
    the profiling and the categories are levers_micro's)."""
    import torch
    from levers_micro import kernel_breakdown as profiled

    feeds = random_feeds(batch, seq, "cuda")
    args = [feeds[n] for n in NAMES]

    def forward():
        with torch.no_grad(), torch.jit.optimized_execution(False):
            module(*args)

    result = profiled(forward, iters=iters)
    # BERT-base matmul FLOPs per token: 12 layers x (4 x 768^2 + 2 x 768 x 3072) x 2
    gemm_flops = batch * seq * 12 * (4 * 768 * 768 + 2 * 768 * 3072) * 2
    return {"shape": f"{batch}x{seq}", "ms_per_forward": result["ms"], "total_ms": result["total_ms"],
            "kernels_per_forward": result["kernels_per_call"], "top": result["top"],
            "gemm_tflops": gemm_flops / (result["ms"].get("gemm", float("nan")) / 1000.0) / 1e12}


def check_feeds(seq: int = 128, rows: int = 32) -> dict[str, np.ndarray]:
    feeds = random_feeds(rows, seq, "cpu", seed=7, padded=True)
    return {n: v.numpy() for n, v in feeds.items()}


def fused_rows(model, result: dict, shapes, best, variants, engine_format: str = "fused") -> list[dict]:
    """engine_format "fused" (traced) or "aoti": the fused encoder (trtserve_build.stages.compiled), as
    served: full rows run the no-mask program, padded rows the masked one (both graph-captured).
    ``variants``: (precision, norm) pairs; norm "epilogue" (the served default: residual added in the
    GEMM's epilogue, then the engine's bias + LayerNorm operator, a Triton kernel), "kernel" (the
    operator adds the residual) or "ops" (plain add and LayerNorm), measured side by side."""
    import tempfile

    import torch

    from trtserve_build.core.paths import full_rows_path, fused_engine_name
    from trtserve_build.stages import compiled
    from trtserve_backend.programs import load_program

    rows = []
    for precision, norm in variants:
        label = f"engine {precision} {engine_format}, add+LN {norm}"
        path = Path(tempfile.mkdtemp(prefix="engine_fused_")) / f"{precision}{Path(fused_engine_name(engine_format)).suffix}"
        started = time.perf_counter()
        try:
            record = compiled.make_compiled(model, contract.CLASSIFICATION, precision, NAMES, check_feeds(),
                                            ts.PrecisionGate(min_cosine=ts.SANITY_MIN_COSINE), path,
                                            output=contract.LOGITS, max_batch=max(b for b, _ in shapes + best),
                                            max_seq=512, device="cuda", engine_format=engine_format, norm=norm)
        except Exception as e:  # noqa: BLE001 - one failed variant must not lose the rest of the run
            result["fidelity"][f"{precision}/{engine_format}/{norm} logits"] = {"error": str(e)[:500]}
            log(f"{label}: build failed: {e}")
            continue
        result["fidelity"][f"{precision}/{engine_format}/{norm} logits"] = {"compiled_vs_eager": record.trace_vs_eager,
                                                         "vs_fp32": record.vs_fp32,
                                                         "full_rows_vs_masked": record.full_rows_vs_masked,
                                                         "build_seconds": round(time.perf_counter() - started, 1)}
        log(f"{label}: built in {time.perf_counter() - started:.0f}s, vs fp32 {record.vs_fp32}")
        plan = GraphPlan(tuple(sorted({b for b, _ in shapes + best})), tuple(sorted({s for _, s in shapes})))
        encoder = None
        try:
            encoder = TorchEncoder.from_file(str(path), NAMES, "cuda", plan)
            encoder.full_module = load_program(full_rows_path(path), "cuda")
            result["capture"][label] = {"graphs": 2 * len(plan.keys()), "seconds": round(encoder.capture(), 2)}
            rows += engine_rows(encoder, f"{label} + CUDA graphs", shapes + best)
            rows += engine_rows(encoder, f"{label} + CUDA graphs, padded rows", [(256, 128)], padded=True)
            breakdown = kernel_breakdown(encoder.full_module, 256, 128)  # the no-mask program, full rows
            result.setdefault("kernel_breakdown", {})[label] = breakdown
            log(f"{label} kernels at 256x128: {breakdown}")
        except Exception as e:  # noqa: BLE001 - report, keep the other rows
            result["capture"][label] = {"error": str(e)[:500]}
            log(f"{label}: load/capture/run failed: {e}")
        del encoder
        gc.collect()
        torch.cuda.empty_cache()
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--quick", action="store_true", help="smoke run: two shapes, fp16 engine only")
    parser.add_argument("--lean", action="store_true",
                        help="make gpu-bench: batch 1/32 x 128, best batches 128/256, fp16 + hybrid SDPA engines")
    args = parser.parse_args(argv)
    exit_on_sigterm()

    import torch
    import transformers
    from transformers import BertConfig, BertForSequenceClassification

    result: dict = {"machine": gpu_info(), "transformers": transformers.__version__,
                    "model": "BERT-base (bert-base-uncased config: 12 layers, hidden 768, 12 heads), random weights, "
                             "2-way classification head; inputs: random token ids, no padding",
                    "timing": "p50 of calls each followed by cuda synchronize; throughput from the same call "
                              "back to back (CUDA events)",
                    "tf32_matmul": torch.backends.cuda.matmul.allow_tf32, "rows": [], "fidelity": {}, "capture": {}}
    shapes = SHAPES[:2] if args.quick else [(1, 128), (32, 128)] if args.lean else SHAPES
    best = [] if args.quick else [(b, 128) for b in ((128, 256, 512) if args.lean else BEST_BATCHES)]
    torch.manual_seed(0)
    config = BertConfig(num_labels=2)
    model = BertForSequenceClassification(config).eval().cuda()
    result["hf_attention"] = model.config._attn_implementation
    log(f"BERT-base built ({sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters), "
        f"HF attention {result['hf_attention']}")

    try:
        result["rows"] += hf_rows(model, "HF eager fp32", shapes)
        half = copy.deepcopy(model).half()
        result["rows"] += hf_rows(half, "HF eager fp16", shapes)
        del half
        gc.collect()
        torch.cuda.empty_cache()

        variants = ([("fp16", "sdpa")] if args.quick else [("fp16", "sdpa"), ("hybrid", "sdpa")] if args.lean
                    else [("fp16", "sdpa"), ("hybrid", "sdpa"), ("fp16", "eager")])
        feeds = check_feeds()
        for precision, attention in variants:
            label = f"engine {precision} {attention}"
            traced, record = ts.make_torchscript(model, contract.CLASSIFICATION, precision, attention, NAMES, feeds,
                                                 ts.PrecisionGate(min_cosine=ts.SANITY_MIN_COSINE), device="cuda")
            result["fidelity"][f"{precision}/{attention} logits"] = {"trace_vs_eager": record.trace_vs_eager,
                                                                     "vs_fp32": record.vs_fp32}
            plan_batches = sorted({b for b, _ in shapes + best})
            plan = GraphPlan(tuple(plan_batches), tuple(sorted({s for _, s in shapes})))
            encoder = TorchEncoder(traced, NAMES, "cuda", plan)
            result["capture"][label] = {"graphs": len(plan.keys()), "seconds": round(encoder.capture(), 2)}
            log(f"{label}: captured {len(plan.keys())} graphs in {encoder.capture_seconds:.1f}s")
            result["rows"] += engine_rows(encoder, f"{label} + CUDA graphs", shapes + (best if attention == "sdpa" else []))
            if (precision, attention) == ("fp16", "sdpa") and not args.lean:
                eager = TorchEncoder(traced, NAMES, "cuda", plan=None)
                result["rows"] += engine_rows(eager, f"{label}, no graphs", shapes)
            if (precision, attention) == ("fp16", "sdpa") and not args.quick:
                try:
                    result.setdefault("kernel_breakdown", {})[label] = kernel_breakdown(traced, 256, 128)
                    log(f"{label} kernels at 256x128: {result['kernel_breakdown'][label]}")
                except Exception as e:  # noqa: BLE001 - the profiler is a diagnostic, not the benchmark
                    result.setdefault("kernel_breakdown", {})[label] = {"error": str(e)[:300]}
            del encoder, traced
            gc.collect()
            torch.cuda.empty_cache()

        if not args.quick:
            norms = ("epilogue", "kernel") if args.lean else ("epilogue", "kernel", "ops")
            pairs = [(p, n) for p in (["fp16"] if args.lean else ["fp16", "hybrid"]) for n in norms]
            result["rows"] += fused_rows(model, result, shapes, best, pairs)

        # Fidelity on a richer output than two logits: mean-pooled 768-d embeddings.
        for precision in (["fp16"] if args.quick or args.lean else ["fp16", "hybrid"]):
            _, record = ts.make_torchscript(model.bert, contract.EMBEDDING_TASK, precision, "sdpa", NAMES, feeds,
                                            ts.PrecisionGate(min_cosine=ts.SANITY_MIN_COSINE), device="cuda")
            result["fidelity"][f"{precision}/sdpa embeddings"] = {"trace_vs_eager": record.trace_vs_eager,
                                                                  "vs_fp32": record.vs_fp32}
            log(f"fidelity {precision} embeddings vs fp32: {record.vs_fp32}")
    finally:
        write_json(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
