"""The torch engine's own operator ``trtserve::add_layer_norm`` (serve/trtserve_backend/kernels.py):
its torch-ops path here, the Triton program itself under Triton's interpreter (on the CPU, in the
reference venv, which has the ``triton`` package), and a trace that calls it loading back only
through :func:`~trtserve_backend.programs.load_traced`."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

torch = pytest.importorskip("torch")

from trtserve_backend import kernels  # noqa: E402
from trtserve_backend.programs import load_traced  # noqa: E402

from ..reference_env import REPO_ROOT, reference_python  # noqa: E402

SHAPES = [(3, 5, 768), (7, 384), (2, 1000), (1, 1, 33), (64, 128)]


def _inputs(shape, dtype, weight_dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    x, r = (torch.randn(shape, generator=g).mul(3).to(dtype) for _ in range(2))
    w, b = (torch.randn(shape[-1], generator=g).to(weight_dtype) for _ in range(2))
    return x, r, w, b


@pytest.mark.parametrize("dtype,weight_dtype", [(torch.float32, torch.float32), (torch.float16, torch.float32),
                                                (torch.float16, torch.float16)])
def test_operator_is_layer_norm_of_the_sum_in_fp32(dtype, weight_dtype):
    x, r, w, b = _inputs((4, 6, 48), dtype, weight_dtype)
    got = torch.ops.trtserve.add_layer_norm(x, r, w, b, 1e-12)
    expected = torch.nn.functional.layer_norm(x.double() + r.double(), (48,), w.double(), b.double(), 1e-12)
    assert got.dtype == dtype and got.shape == x.shape
    tol = 1e-5 if dtype == torch.float32 else 4e-3  # the output's own rounding
    torch.testing.assert_close(got.double(), expected, atol=tol * 4, rtol=tol)


def test_a_row_vector_residual_is_added_to_every_row():
    """The "epilogue" engine's use: the GEMM already added the residual, the operator adds its bias."""
    x, r, w, b = _inputs((4, 6, 48), torch.float16, torch.float32)
    row = r[0, 0].clone()
    got = kernels.add_layer_norm(x, row, w, b, 1e-12)
    expected = torch.nn.functional.layer_norm(x.double() + row.double(), (48,), w.double(), b.double(), 1e-12)
    assert got.shape == x.shape
    torch.testing.assert_close(got.double(), expected, atol=2e-2, rtol=4e-3)


def test_operator_rejects_mismatched_shapes():
    x, r, w, b = _inputs((2, 8), torch.float32, torch.float32)
    with pytest.raises(ValueError, match="residual"):
        kernels.add_layer_norm(x, r[:, :4], w, b, 1e-5)
    with pytest.raises(ValueError, match="residual"):
        kernels.add_layer_norm(x, r[0, :4], w, b, 1e-5)
    with pytest.raises(ValueError, match="weight"):
        kernels.add_layer_norm(x, r, w[:4], b[:4], 1e-5)


def test_a_trace_records_the_operator_and_loads_back_through_load_traced(tmp_path):
    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.linspace(0.5, 1.5, 16), requires_grad=False)
            self.b = torch.nn.Parameter(torch.linspace(-1, 1, 16), requires_grad=False)

        def forward(self, x):
            return kernels.add_layer_norm(x * 2, x, self.w, self.b, 1e-5)

    traced = torch.jit.trace(Block().eval(), torch.randn(2, 16))
    assert "trtserve::add_layer_norm" in str(traced.graph)
    traced.save(str(tmp_path / "block.pt"))
    x = torch.randn(3, 16)
    # A fresh process: torch.jit.load alone does not know the operator, load_traced registers it.
    script = textwrap.dedent(f"""
        import torch, sys
        try:
            torch.jit.load({str(tmp_path / 'block.pt')!r})
            sys.exit("loaded without the operator registered")
        except RuntimeError as e:
            assert "trtserve::add_layer_norm" in str(e), e
        from trtserve_backend.programs import load_traced
        module, meta = load_traced({str(tmp_path / 'block.pt')!r})
        torch.save(module(torch.load({str(tmp_path / 'x.pt')!r})), {str(tmp_path / 'y.pt')!r})
    """)
    torch.save(x, tmp_path / "x.pt")
    subprocess.run([sys.executable, "-c", script], check=True, timeout=300)
    torch.testing.assert_close(torch.load(tmp_path / "y.pt"), Block()(x))
    module, meta = load_traced(tmp_path / "block.pt")
    assert meta == {}


def test_triton_program_equals_the_torch_ops_interpreted_on_the_cpu():
    """The Triton program itself (the CUDA path), run by Triton's interpreter on CPU tensors:
    widths that are and are not powers of two, FP16 and FP32, FP32 and FP16 LayerNorm weights, a
    residual per row and one row vector for all."""
    script = textwrap.dedent(f"""
        import json, torch
        from trtserve_backend import kernels
        assert kernels.triton is not None and kernels.INTERPRET
        out = []
        for dtype, wdtype in [(torch.float32, torch.float32), (torch.float16, torch.float32),
                              (torch.float16, torch.float16)]:
            for shape in {SHAPES!r}:
                g = torch.Generator().manual_seed(len(out))
                x, full = (torch.randn(shape, generator=g).mul(3).to(dtype) for _ in range(2))
                w, b = (torch.randn(shape[-1], generator=g).to(wdtype) for _ in range(2))
                assert kernels.uses_triton(x)
                for residual, r in (("full", full), ("row", full.reshape(-1, shape[-1])[-1].clone())):
                    got = kernels.add_layer_norm(x, r, w, b, 1e-12)
                    ref = kernels.reference(x, r, w, b, 1e-12)
                    exact = torch.nn.functional.layer_norm(x.double() + r.double(), shape[-1:], w.double(),
                                                           b.double(), 1e-12)
                    out.append(dict(dtype=str(dtype), weights=str(wdtype), shape=shape, residual=residual,
                                    out_dtype=str(got.dtype),
                                    vs_ops=(got.double() - ref.double()).abs().max().item(),
                                    vs_exact=((got.double() - exact).abs() / (1 + exact.abs())).max().item()))
        print(json.dumps(out))
    """)
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONNOUSERSITE="1", PYTHONPATH=str(REPO_ROOT / "serve"))
    proc = subprocess.run([str(reference_python()), "-c", script], capture_output=True, text=True, timeout=600,
                          env=env, cwd=REPO_ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(rows) == 2 * 3 * len(SHAPES)
    for row in rows:
        half = row["dtype"] == "torch.float16"
        assert row["out_dtype"] == row["dtype"], row
        # same FP32 arithmetic as the torch ops: at most one rounding step of the output apart
        assert row["vs_ops"] <= (8e-3 if half else 2e-5), row
        assert row["vs_exact"] <= (1e-3 if half else 2e-6), row
