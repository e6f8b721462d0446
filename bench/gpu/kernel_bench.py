"""The add + LayerNorm operator alone (serve/trtserve_backend/kernels.py) on a GPU: its Triton
program at each ``num_warps`` against the same arithmetic as torch ops and against fp16 add +
LayerNorm, at BERT-base's [tokens, 768] (256x128 and 1x128 tokens), CUDA-event timed.

    python bench/gpu/kernel_bench.py --out kernel.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[2] / "serve")]

import torch  # noqa: E402

from trtserve_backend import kernels  # noqa: E402


def timed_us(fn, iters: int = 200) -> float:
    for _ in range(10):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) * 1000.0 / iters


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    rows = []
    for tokens in (256 * 128, 128):
        x, r = (torch.randn(tokens, 768, device="cuda", dtype=torch.float16) for _ in range(2))
        w, b = torch.randn(768, device="cuda"), torch.randn(768, device="cuda")
        out = torch.empty_like(x)
        moved = 3 * x.numel() * x.element_size()

        def triton_program(warps):
            return lambda: kernels._add_layer_norm_rows[(tokens,)](x, r, w, b, out, 768, 1e-12, BLOCK=1024,
                                                                    num_warps=warps)

        subjects = {f"triton, {w} warps": triton_program(w) for w in (1, 2, 4, 8)}
        subjects["operator (as served)"] = lambda: kernels.add_layer_norm(x, r, w, b, 1e-12)
        subjects["torch ops, fp32 (reference)"] = lambda: kernels.reference(x, r, w, b, 1e-12)
        subjects["torch ops, fp16 add + layer_norm"] = lambda: torch.nn.functional.layer_norm(x + r, (768,), w.half(),
                                                                                               b.half(), 1e-12)
        expected = kernels.reference(x, r, w, b, 1e-12).float()
        for name, fn in subjects.items():
            fn()
            got = out if name.startswith("triton") else fn()
            us = timed_us(fn)
            rows.append({"tokens": tokens, "subject": name, "us": round(us, 2), "GBps": round(moved / us / 1e3, 1),
                         "max_abs_diff": float((got.float() - expected).abs().max())})
            print(json.dumps(rows[-1]), flush=True)
    Path(args.out).write_text(json.dumps({"gpu": torch.cuda.get_device_name(), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
