"""The FP16-faithful interpreter's ops that run on FP16 as is (runtime/interpreter_ops._rounded_once)
give exactly what computing in FP32 and rounding once gives (_compute), overflow and subnormals too."""
from __future__ import annotations

import pytest
import torch

from trtserve_build.runtime import interpreter_ops as O


def _halves(seed: int, shape=(4, 96, 160)) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g) * torch.logspace(-9, 4.6, shape[-1])  # subnormal .. near 65504
    return x.clamp(-60000, 60000).to(torch.float16)  # finite: sums and products may overflow


@pytest.mark.parametrize("op", ["Add", "Sub", "Mul"])
def test_binary_ops_on_fp16_equal_fp32_compute_rounded_once(op):
    a, b = _halves(1), _halves(2)
    fn = getattr(torch, op.lower())
    got = O.OPS[op](None, [a, b], {})
    want = O._compute(None, fn, [a, b])
    assert got.dtype == torch.float16 and torch.equal(got.isinf(), want.isinf())
    assert torch.equal(got, want)
    if op == "Mul":
        assert got.isinf().any()  # the overflow an FP16 kernel shows is kept


def test_softmax_on_fp16_equals_fp32_compute_rounded_once():
    x = _halves(3) / 1000
    it = type("It", (), {"torch": torch})()
    got = O.OPS["Softmax"](it, [x], {"axis": -1})
    assert got.dtype == torch.float16
    assert torch.equal(got, torch.softmax(x.float(), dim=-1).to(torch.float16))


def test_mixed_types_still_compute_in_fp32():
    a, b = _halves(4), _halves(5).float()
    got = O.OPS["Add"](None, [a, b], {})
    assert got.dtype == torch.float16 and torch.equal(got, (a.float() + b).to(torch.float16))
