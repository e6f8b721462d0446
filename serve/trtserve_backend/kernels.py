"""The torch engine's own operator: ``trtserve::add_layer_norm`` (residual add + LayerNorm, one pass).

BERT's post-LN layer ends twice in ``LayerNorm(x + residual)``. Run as plain ops that is two
kernels and a full-size intermediate in memory (on an H200 at 256x128, BERT-base spends ~1.8 ms
in LayerNorm and ~1 ms in the adds of 13.3 ms); TorchScript cannot fuse them and Inductor, which
can, is not available to the served engine (bench/gpu/NOTES.md, session 7). This operator reads
both inputs once, adds and normalises in FP32 and writes the result in the input's dtype: the
paper's hybrid policy (LayerNorm in FP32) at the cost of one memory pass.

- On CUDA with the ``triton`` package (it ships with the CUDA wheels of torch): one Triton program
  per row. Launched on the current stream, so CUDA graph capture records it like any kernel.
  Measured on an H200 (``bench/gpu/kernel_bench.py``, [32768, 768] fp16): 39 us with 2 warps per
  768-wide row (3.9 TB/s), 43 us with 4, 57 with 8; fp16 add + LayerNorm as torch ops 111 us, the
  FP32 torch ops 349 us.
- Anywhere else (the CPU, or CUDA without triton): the same arithmetic as torch ops.

It is a registered dispatcher op (``torch.library.custom_op``), so ``torch.jit.trace`` records it
as ``trtserve::add_layer_norm`` and a process must import this module before it loads such a
trace (:mod:`.torch_engine` does). ``TRITON_INTERPRET=1`` (set before this module is imported)
runs the Triton program on CPU tensors, which is how the tests check it on a machine without a GPU.
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F

try:
    import triton
    import triton.language as tl
except ImportError:  # the CPU wheels of torch come without triton: the torch-ops path serves
    triton = None

#: ``TRITON_INTERPRET=1``: the Triton program runs (interpreted) on CPU tensors too
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


if triton is not None:
    @triton.jit
    def _add_layer_norm_rows(x_ptr, r_ptr, w_ptr, b_ptr, y_ptr, width, r_stride, eps, BLOCK: tl.constexpr):
        """``r_stride``: ``width`` for a residual row per row, 0 for one vector added to every row."""
        program = tl.program_id(0).to(tl.int64)
        row = program * width
        cols = tl.arange(0, BLOCK)
        keep = cols < width
        x = tl.load(x_ptr + row + cols, mask=keep, other=0.0).to(tl.float32)
        x += tl.load(r_ptr + program * r_stride + cols, mask=keep, other=0.0).to(tl.float32)
        mean = tl.sum(x, axis=0) / width
        centred = tl.where(keep, x - mean, 0.0)
        var = tl.sum(centred * centred, axis=0) / width
        w = tl.load(w_ptr + cols, mask=keep, other=0.0).to(tl.float32)
        b = tl.load(b_ptr + cols, mask=keep, other=0.0).to(tl.float32)
        y = centred * tl.rsqrt(var + eps) * w + b
        tl.store(y_ptr + row + cols, y.to(y_ptr.dtype.element_ty), mask=keep)


def uses_triton(x: torch.Tensor) -> bool:
    """Whether :func:`add_layer_norm` runs the Triton program for ``x`` (else torch ops)."""
    return triton is not None and (x.is_cuda or INTERPRET)


def reference(x, residual, weight, bias, eps: float):
    """``LayerNorm(x + residual)`` in FP32 as torch ops, returned in ``x``'s dtype."""
    total = x.float() + residual.float()
    return F.layer_norm(total, weight.shape, weight.float(), bias.float(), eps).to(x.dtype)


@torch.library.custom_op("trtserve::add_layer_norm", mutates_args=())
def add_layer_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                   eps: float) -> torch.Tensor:
    """``LayerNorm(x + residual)`` over the last dimension, computed in FP32, in ``x``'s dtype.

    ``residual``: the shape of ``x``, or one row (``x.shape[-1:]``, e.g. a GEMM's bias) added to
    every row."""
    if (residual.shape not in (x.shape, x.shape[-1:]) or weight.shape != x.shape[-1:]
            or bias.shape != weight.shape):
        raise ValueError(f"add_layer_norm: x {tuple(x.shape)}, residual {tuple(residual.shape)}, "
                         f"weight {tuple(weight.shape)}, bias {tuple(bias.shape)}")
    if not uses_triton(x):
        return reference(x, residual, weight, bias, eps)
    x, residual = x.contiguous(), residual.contiguous()
    out = torch.empty_like(x)
    width = x.shape[-1]
    rows = x.numel() // width if width else 0
    if rows:
        block = triton.next_power_of_2(width)
        r_stride = width if residual.shape == x.shape else 0
        _add_layer_norm_rows[(rows,)](x, residual, weight.contiguous(), bias.contiguous(), out, width, r_stride,
                                      eps, BLOCK=block, num_warps=min(max(block // 512, 1), 8))
    return out


@add_layer_norm.register_fake
def _(x, residual, weight, bias, eps):
    return torch.empty_like(x)
