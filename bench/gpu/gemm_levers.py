"""GEMM and attention levers for the fused BERT-base engine, side by side in one process.

The session-8 breakdown put 84% of the fused engine's forward at 256x128 in its GEMMs (9.7 of
11.6 ms, 572 TFLOP/s). This measures what can make those kernels faster without changing the
engine's arithmetic:

* per GEMM shape of BERT-base at 32768 rows (256x128): ``F.linear`` (cuBLAS "TN"), ``addmm`` on a
  pre-transposed weight ("NN"), the cuBLASLt bias+GELU epilogue; under cuBLAS and cuBLASLt
  preference, and after TunableOp (``torch.cuda.tunable``: times every cuBLAS / cuBLASLt
  candidate for each shape and keeps the fastest);
* the whole served engine (``trtserve_build.stages.compiled`` fused, traced, graph-captured,
  the code Triton runs) captured under each setting: default, cuBLASLt preferred, cuDNN
  attention first, TunableOp, TunableOp + cuDNN attention (``--levers``);
* the engine built with each ``--norms`` mode (models/fused.NORM_MODES: the add + LayerNorm
  operator after the GEMM, or the residual added in the GEMM's epilogue), with the GPU time of
  one forward by kernel category.

Graphs fix their kernels at capture, so the captured engines are timed interleaved, round after
round, in one process.

``python3 bench/gpu/gemm_levers.py --out x.json [--norms kernel,epilogue] [--levers]``

Session 9 (H200, ``--levers``): no setting beat the default: cuBLASLt preferred, cuDNN attention
first and TunableOp within 1% of it, efficient attention 8% slower (bench/gpu/NOTES.md).
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import sys
import tempfile
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[2] / d) for d in ("build", "serve", "contract")]

from engine_bench import NAMES, check_feeds, kernel_breakdown, random_feeds  # noqa: E402
from timing import exit_on_sigterm, gpu_info, time_gpu, write_json  # noqa: E402

import trtserve_contract as contract  # noqa: E402

SHAPES = [(1, 128), (32, 128), (256, 128), (512, 128)]
# (name, k, n) of BERT-base's GEMMs per layer: rows = batch x sequence
GEMMS = [("qkv", 768, 2304), ("attn_out", 768, 768), ("ffn_up_gelu", 768, 3072), ("ffn_down", 3072, 768)]


def log(msg: str) -> None:
    print(f"[gemm_levers {time.strftime('%H:%M:%S')}] {msg}", flush=True)


@contextlib.contextmanager
def blas(library: str):
    import torch

    before = torch.backends.cuda.preferred_blas_library()
    torch.backends.cuda.preferred_blas_library(library)
    try:
        yield
    finally:
        torch.backends.cuda.preferred_blas_library(before)


@contextlib.contextmanager
def attention_first(backend: str | None):
    if backend is None:
        yield
        return
    from torch.nn.attention import SDPBackend, sdpa_kernel

    order = [getattr(SDPBackend, backend), SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
    with sdpa_kernel(list(dict.fromkeys(order)), set_priority=True):
        yield


def gemm_table(rows: int, tag: str) -> list[dict]:
    """TFLOP/s of each BERT-base GEMM at ``rows`` rows, three formulations, current settings."""
    import torch
    import torch.nn.functional as F

    out = []
    for name, k, n in GEMMS:
        x = torch.randn(rows, k, device="cuda", dtype=torch.float16)
        w = torch.randn(n, k, device="cuda", dtype=torch.float16) * 0.02
        wt = w.t().contiguous()
        b = torch.randn(n, device="cuda", dtype=torch.float16)
        flops = 2.0 * rows * k * n
        forms = {"linear_TN": lambda: F.linear(x, w, b), "addmm_NN": lambda: torch.addmm(b, x, wt)}
        if name == "ffn_up_gelu":
            forms = {"addmm_gelu_TN": lambda: torch._addmm_activation(b, x, w.t(), use_gelu=True),
                     "addmm_gelu_NN": lambda: torch._addmm_activation(b, x, wt, use_gelu=True)}
        for form, fn in forms.items():
            r = time_gpu(fn, 1, budget_s=0.15)
            tflops = flops / (r["back_to_back_ms"] / 1000.0) / 1e12
            out.append({"settings": tag, "gemm": name, "form": form, "rows": rows, "k": k, "n": n,
                        "us": round(r["back_to_back_ms"] * 1000.0, 1), "tflops": round(tflops, 1)})
            log(f"{tag:22s} {name:12s} {form:14s} {rows}x{k}x{n}: {r['back_to_back_ms'] * 1000:7.1f} us "
                f"{tflops:6.1f} TFLOP/s")
        del x, w, wt, b
    return out


def build_engine(model, path: Path, norm: str) -> None:
    from trtserve_build.stages import compiled
    from trtserve_build.stages import torchscript as ts

    compiled.make_compiled(model, contract.CLASSIFICATION, "fp16", NAMES, check_feeds(),
                           ts.PrecisionGate(min_cosine=ts.SANITY_MIN_COSINE), path, output=contract.LOGITS,
                           max_batch=512, max_seq=512, device="cuda", engine_format="fused", norm=norm)


def load_engine(path: Path, plan=None):
    """The served engine of ``path`` and its full-rows program (``plan``: the graphs to capture)."""
    from trtserve_build.core.paths import full_rows_path
    from trtserve_backend.programs import load_program
    from trtserve_backend.torch_engine import TorchEncoder

    encoder = TorchEncoder.from_file(str(path), NAMES, "cuda", plan)
    encoder.full_module = load_program(full_rows_path(path), "cuda")
    return encoder


def load_and_capture(path: Path, attention: str | None, library: str):
    from trtserve_backend.torch_engine import GraphPlan

    encoder = load_engine(path, GraphPlan(tuple(sorted({b for b, _ in SHAPES})), (128,)))
    with blas(library), attention_first(attention):
        encoder.capture()
    return encoder


def tune(path: Path) -> None:
    """TunableOp over every GEMM the engine runs at the measured shapes (eager, no graphs)."""
    import torch

    encoder = load_engine(path)
    for batch, seq in SHAPES:
        feeds = random_feeds(batch, seq, "cuda")
        for full in (False, True):
            encoder.run_eager(feeds, full=full)
    torch.cuda.synchronize()


def tune_and_capture(path: Path, csv: str, result: dict, engines: dict) -> None:
    """TunableOp on: tune the engine's GEMMs (and the micro table's), then capture two engines."""
    import torch

    tunable = torch.cuda.tunable
    tunable.enable(True)
    tunable.tuning_enable(True)
    tunable.set_filename(csv)
    started = time.perf_counter()
    tune(path)
    result["gemms"] += gemm_table(32768, "tunableop cublas")  # tunes the micro shapes too
    tunable.tuning_enable(False)
    result["tuning_seconds"] = round(time.perf_counter() - started, 1)
    result["tunable_results"] = [list(map(str, r)) for r in tunable.get_results()]
    log(f"TunableOp tuned in {result['tuning_seconds']}s: {len(result['tunable_results'])} results")
    for label, attention in (("tunableop", None), ("tunableop + cudnn attention", "CUDNN_ATTENTION")):
        try:
            engines[label] = load_and_capture(path, attention, "cublas")
        except Exception as e:  # noqa: BLE001 - one failed variant must not lose the rest
            result["errors"][label] = str(e)[:500]
            log(f"{label}: capture failed: {e}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--norms", default="kernel,epilogue", help="engines to build, by models/fused norm mode")
    parser.add_argument("--levers", action="store_true", help="also the GEMM table and the cuBLAS/attention/"
                        "TunableOp settings (on the first norm's engine)")
    parser.add_argument("--tunable-csv", default=str(Path(tempfile.gettempdir()) / "tunableop_results.csv"))
    args = parser.parse_args(argv)
    exit_on_sigterm()

    import torch
    from transformers import BertConfig, BertForSequenceClassification

    result: dict = {"machine": gpu_info(), "gemms": [], "engines": {}, "rows": [], "errors": {},
                    "kernel_breakdown": {}}
    try:
        if args.levers:
            for library in ("cublas", "cublaslt"):
                with blas(library):
                    result["gemms"] += gemm_table(32768, library)

        torch.manual_seed(0)
        model = BertForSequenceClassification(BertConfig(num_labels=2)).eval().cuda()
        norms = args.norms.split(",")
        paths = {}
        for norm in norms:
            paths[norm] = Path(tempfile.mkdtemp(prefix="gemm_levers_")) / "fp16.ts"
            started = time.perf_counter()
            build_engine(model, paths[norm], norm)
            log(f"fused fp16 engine, norm {norm}, built in {time.perf_counter() - started:.0f}s")
        del model
        gc.collect()

        engines = {}
        settings = [(f"norm {n}", paths[n], None, "cublas") for n in norms]
        if args.levers:
            path = paths[norms[0]]
            settings += [("cublaslt preferred", path, None, "cublaslt"),
                         ("cudnn attention first", path, "CUDNN_ATTENTION", "cublas"),
                         ("efficient attention first", path, "EFFICIENT_ATTENTION", "cublas")]
        for label, path, attention, library in settings:
            try:
                engines[label] = load_and_capture(path, attention, library)
            except Exception as e:  # noqa: BLE001 - one failed variant must not lose the rest
                result["errors"][label] = str(e)[:500]
                log(f"{label}: capture failed: {e}")
        for norm in norms:
            encoder = engines.get(f"norm {norm}")
            if encoder is not None:
                result["kernel_breakdown"][norm] = kernel_breakdown(encoder.full_module, 256, 128)
                log(f"norm {norm} kernels at 256x128: {result['kernel_breakdown'][norm]}")

        # TunableOp last: it stays enabled for what is captured after it.
        if args.levers:
            try:
                tune_and_capture(paths[norms[0]], args.tunable_csv, result, engines)
            except Exception as e:  # noqa: BLE001
                result["errors"]["tunableop"] = str(e)[:500]
                log(f"TunableOp: {e}")

        feeds = {shape: random_feeds(*shape, "cuda") for shape in SHAPES}
        for round_ in range(1, args.rounds + 1):
            for label, encoder in engines.items():
                for batch, seq in SHAPES:
                    r = time_gpu(lambda: encoder.run(feeds[(batch, seq)], full_rows=True), batch)
                    result["rows"].append({"engine": label, "round": round_, "batch": batch, "seq": seq, **r})
                    log(f"round {round_} {label:28s} {batch:4d}x{seq}: p50 {r['p50_ms']:7.3f} ms "
                        f"{r['throughput_per_s']:9.0f} seq/s")
        # the same engines agree (same arithmetic, different kernels)
        ref = next(iter(engines.values()), None)
        if ref is not None:
            f = random_feeds(32, 128, "cuda", seed=3)
            base = ref.run(f, full_rows=True).float()
            for label, encoder in engines.items():
                diff = (encoder.run(f, full_rows=True).float() - base).abs().max().item()
                result["engines"][label] = {"max_abs_diff_vs_first": diff}
        summary = {}
        for row in result["rows"]:
            key = f"{row['engine']} {row['batch']}x{row['seq']}"
            summary.setdefault(key, []).append(row["throughput_per_s"] if row["batch"] > 1 else row["p50_ms"])
        result["summary_median"] = {k: sorted(v)[len(v) // 2] for k, v in summary.items()}
        for k, v in result["summary_median"].items():
            log(f"median {k:40s} {v:10.3f}")
    finally:
        write_json(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
