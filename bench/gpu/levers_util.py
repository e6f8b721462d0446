"""Helpers of bench/gpu/engine_levers.py: per-step time caps, CPU timing, inputs, agreement, the table."""
from __future__ import annotations

import contextlib
import math
import signal
import time

import torch

import levers_models as lm
from compile_bench import graphed  # noqa: F401 - re-exported: one capture helper for the GPU benches
from timing import summary_ms
from trtserve_build.core.metrics import Agreement

TARGET_SEQ_PER_S = 22000.0
TARGET_1X128_MS = 0.6


class StepTimeout(Exception):
    pass


@contextlib.contextmanager
def time_cap(seconds: float):
    """Raise StepTimeout in the main thread after ``seconds`` (a long compile or autotune)."""
    def expire(*_):
        raise StepTimeout(f"over its {seconds:.0f}s cap")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.01))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def time_cpu(fn, rows: int, iters: int = 3) -> dict:
    """The CPU rehearsal's stand-in for timing.time_gpu (same keys)."""
    fn()
    samples = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    out = summary_ms(samples)
    out.update({"throughput_per_s": rows * 1000.0 / out["mean_ms"], "back_to_back_ms": out["mean_ms"], "iters": iters})
    return out


def cuda_usable() -> bool:
    """False once a kernel fault has poisoned this process's CUDA context (every later call would fail)."""
    try:
        torch.cuda.synchronize()
        return torch.ones(1, device="cuda").add_(1).item() == 2.0
    except Exception:  # noqa: BLE001 - any failure here means the context is gone
        return False


def make_feeds(batch: int, seq: int, vocab: int, device, seed: int, padded: bool) -> list:
    """[input_ids, attention_mask, token_type_ids]; padded: random lengths 2..seq (row 0 full)."""
    g = torch.Generator().manual_seed(seed * 7919 + batch * 131 + seq)
    ids = torch.randint(min(1000, vocab // 2), vocab, (batch, seq), generator=g)
    mask = torch.ones(batch, seq, dtype=torch.int64)
    if padded:
        for row, length in enumerate(torch.randint(2, seq + 1, (batch,), generator=g).tolist()):
            if row:
                mask[row, length:] = 0
    return [(ids * mask).to(device), mask.to(device), torch.zeros(batch, seq, dtype=torch.int64, device=device)]


def agreement(reference, candidate) -> dict:
    a = Agreement.measure(reference.detach().float().cpu().numpy(), candidate.detach().float().cpu().numpy())
    return {"min_cosine": a.min_cosine, "max_abs_diff": a.max_abs_diff, "nonfinite_fraction": a.nonfinite_fraction}


def table(result: dict) -> str:
    """Markdown: one line per lever, throughput at each batch, ratio to the baseline, fidelity."""
    rows = result["rows"]
    batches = sorted({r["batch"] for r in rows if r["batch"] > 1})
    base = {r["batch"]: r["throughput_per_s"] for r in rows if r["lever"] == lm.BASELINE}
    head = ["lever"] + [f"{b}x{result['seq']} seq/s (x base)" for b in batches] + [
        "1x p50 ms", "logits cos min", "pooled cos min", "within tol", f">= {TARGET_SEQ_PER_S / 1000:.0f}k"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, info in result["levers"].items():
        mine = {r["batch"]: r for r in rows if r["lever"] == name}
        cells = [name + (f" ({info['note']})" if info.get("note") else "")]
        for b in batches:
            r = mine.get(b)
            cells.append("-" if r is None else f"{r['throughput_per_s']:,.0f} ({r['throughput_per_s'] / base[b]:.2f}x)"
                         if b in base else f"{r['throughput_per_s']:,.0f}")
        cells.append(f"{mine[1]['p50_ms']:.3f}" if 1 in mine else "-")
        cos = [r["logits_vs_fp32"]["min_cosine"] for r in mine.values()]
        cells.append(f"{min(cos):.6f}" if cos else "-")
        pooled = info.get("pooled_vs_fp32", {}).get("min_cosine")
        cells.append("-" if pooled is None else f"{pooled:.6f}")
        ok = [r["within_tolerance"] for r in mine.values()]
        cells.append(("yes" if all(ok) else "NO") if ok else "-")
        best = max((r["throughput_per_s"] for r in mine.values() if r["batch"] > 1), default=math.nan)
        cells.append("-" if math.isnan(best) else ("yes" if best >= TARGET_SEQ_PER_S and all(ok) else "no"))
        lines.append("| " + " | ".join(cells) + " |")
    if result["errors"]:
        lines.append("")
        lines += [f"- {key}: {err}" for key, err in result["errors"].items()]
    if "baseline_retimed" in result:
        lines.append(f"\nbaseline re-timed at the end: {result['baseline_retimed']['throughput_per_s']:,.0f} seq/s")
    return "\n".join(lines)
