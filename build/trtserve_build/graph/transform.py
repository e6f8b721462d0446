"""Precision transformations: the exported FP32 ONNX graph -> a strongly typed ``fp16``/``hybrid``/``int8`` graph.

TensorRT 10 (STRONGLY_TYPED), TensorRT 11 and TensorRT-RTX take the precision of every tensor
from the ONNX graph, so precision is an ONNX-level transformation here and the builder takes
the result as is. The same file also runs under ONNX Runtime, which the fidelity report uses.

Modes
-----
``fp32``
    The exported graph, unchanged.
``fp16``
    Every floating-point op and weight in FP16. The ensemble contract is kept: int64 inputs as
    exported, and a Cast to FP32 in front of the output.
``hybrid``
    FP16 weights and MatMul/Gemm; the ops of the named FP32 policy (:data:`HYBRID_POLICY`:
    LayerNormalization or the decomposed LayerNorm subgraph, Softmax, reductions, Pow/Sqrt/Exp
    and other overflow-prone ops) stay in FP32. Every other op follows its inputs: FP32 when all
    of its computed inputs are FP32, otherwise FP16. Casts appear only where an FP16 region
    meets an FP32 one, one Cast per (tensor, type), shared by all consumers.
``int8``
    ``hybrid`` plus explicit QuantizeLinear/DequantizeLinear on the inputs of MatMul/Gemm:
    weights per output channel (symmetric, from the FP32 weights), activations per tensor with
    scales from :mod:`trtserve_build.stages.calibrate`. Q/DQ run on FP16 tensors, which needs opset
    19; the graph is converted with ``onnx.version_converter`` first.

How types are assigned (one pass, no guessing from names)
---------------------------------------------------------
1. *Seeds*: MatMul/Gemm and Gather reading a weight table run in FP16; policy ops in FP32.
2. *Followers*: in topological order, an op runs in FP32 iff all its computed float inputs
   come from FP32 ops; otherwise FP16.
3. *Sources* (float tensors computed only from constants and integer inputs, e.g. the
   attention-mask bias ``Where(mask, 0, -3.4e38)``) take the precision their consumers want,
   so the mask is built in FP16 directly instead of being cast (-3.4e38 becomes -inf in FP16;
   such constants are clamped to +-65504 and counted).
4. *Constants* (initializers and Constant nodes) are stored in each precision their
   consumers need; a weight read in both gets two copies.

Usage::

    trtserve-build precision --spec deployments/embed.toml --precision int8
    trtserve-build precision --onnx model.onnx --precision hybrid --out hybrid.onnx
"""
from __future__ import annotations

from typing import Mapping, Sequence

from ..core.enums import PRECISIONS
from ..core.errors import PrecisionError
from ..core.lazy import lazy_import
from .onnx_graph import check_graph, default_opset, drop_redundant_casts, named_copy, to_opset
from .policy import policy_for
from .qdq import add_qdq
from .retype import retype

onnx = lazy_import("onnx")

#: Opset of int8 graphs: QuantizeLinear/DequantizeLinear on FP16 tensors need opset >= 19.
INT8_OPSET = 19


def transform(
    model,
    precision: str,
    *,
    fp32_ops_extra: Sequence[str] = (),
    activation_amax: Mapping[str, float] | None = None,
    int8_matmuls: str = "linear",
):
    """``(model, report)`` for ``precision`` from the FP32 ``model`` (an ``onnx.ModelProto``).

    ``int8`` needs ``activation_amax`` (see :mod:`trtserve_build.stages.calibrate`).
    The result is checked: valid ONNX (full check), no duplicated or round-trip casts.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}; known: {PRECISIONS}")
    if precision == "fp32":
        out = onnx.ModelProto()
        out.CopyFrom(model)
        return out, None
    policy = policy_for(precision, fp32_ops_extra)
    model = drop_redundant_casts(model)  # the exporter's no-op casts, not the transform's to check
    if precision == "int8":
        if activation_amax is None:
            raise PrecisionError("int8 needs calibrated activation ranges (run calibration first)")
        base = named_copy(model)
        source = to_opset(base, max(INT8_OPSET, default_opset(base)))
        hybrid, report = retype(source, "hybrid", policy)
        out, quantized, skipped = add_qdq(hybrid, base, activation_amax, int8_matmuls)
        report.precision = "int8"
        report.quantized_matmuls = quantized
        report.unquantized_matmuls = skipped
        report.nodes = len(out.graph.node)
        report.opset = default_opset(out)
    else:
        out, report = retype(model, precision, policy)
    check_graph(out)
    return out, report

