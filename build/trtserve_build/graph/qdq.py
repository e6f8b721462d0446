"""int8: explicit QuantizeLinear/DequantizeLinear on the inputs of MatMul/Gemm."""
from __future__ import annotations

from collections import defaultdict
from typing import Mapping

import numpy as np

from ..core.enums import INT8_MATMUL_MODES
from ..core.errors import PrecisionError
from ..core.lazy import lazy_import
from .onnx_graph import NODE_PREFIX, finish

onnx = lazy_import("onnx")
helper = lazy_import("onnx.helper")
numpy_helper = lazy_import("onnx.numpy_helper")


def int8_targets(model, mode: str = "linear") -> list[tuple[str, int, str]]:
    """The MatMul/Gemm inputs to quantize: ``(node name, input index, tensor name)``.

    ``linear``: the activation input of every MatMul/Gemm with a 2-D weight initializer (the
    linear layers). ``all``: also both inputs of activation x activation MatMuls (attention).
    Addressed by node name, which every stage keeps, so ranges calibrated on the FP32 graph
    apply to the transformed one.
    """
    if mode not in INT8_MATMUL_MODES:
        raise ValueError(f"int8 MatMul mode {mode!r}; known: {INT8_MATMUL_MODES}")
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    targets = []
    for n in g.node:
        if n.op_type not in ("MatMul", "Gemm"):
            continue
        a, b = n.input[0], n.input[1]
        if b in inits and len(inits[b].dims) == 2:
            targets.append((n.name, 0, a))
        elif mode == "all" and a not in inits and b not in inits:
            targets += [(n.name, 0, a), (n.name, 1, b)]
    return targets


def _weight_axis(node) -> int:
    """Output-channel axis of a MatMul/Gemm weight (input 1): N of [K, N], or 0 if Gemm transB."""
    if node.op_type == "Gemm" and any(a.name == "transB" and a.i for a in node.attribute):
        return 0
    return 1


def quantize_weight(w: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-channel INT8 with FP16 scales: ``(q int8, scale float16)``, ``w ~= q * scale``
    along ``axis``. Scales are rounded to FP16 (kept normal) before ``q`` is computed, so the
    graph's DequantizeLinear reproduces exactly these values."""
    reduce_axes = tuple(k for k in range(w.ndim) if k != axis)
    amax = np.abs(w).max(axis=reduce_axes).astype(np.float32)
    scale = np.maximum(amax / 127.0, float(np.finfo(np.float16).tiny)).astype(np.float16)
    shape = [1] * w.ndim
    shape[axis] = -1
    q = np.clip(np.rint(w / scale.astype(np.float32).reshape(shape)), -127, 127).astype(np.int8)
    return q, scale


def add_qdq(hybrid, fp32_model, activation_amax: Mapping[str, float], mode: str = "linear"):
    """Insert Q/DQ pairs into the opset-19 ``hybrid`` graph.

    ``activation_amax`` maps the FP32 graph's tensor names (the MatMul inputs of
    :func:`int8_targets` on ``fp32_model``) to calibrated absolute ranges. Weights are quantized
    from ``fp32_model``'s FP32 values (not from the FP16 copies). Returns ``(model, quantized,
    skipped)``.
    """
    m = onnx.ModelProto()
    m.CopyFrom(hybrid)
    g = m.graph
    fp32_inits = {t.name: t for t in fp32_model.graph.initializer}
    by_name = {n.name: n for n in g.node}
    targets = int8_targets(fp32_model, mode)
    missing = sorted({t for _, _, t in targets if t not in activation_amax})
    if missing:
        raise PrecisionError(f"no calibrated range for {len(missing)} MatMul input(s), e.g. {missing[:3]}")

    qdq_after: dict[str, list] = defaultdict(list)  # activation tensor -> its Q, DQ
    weight_dq: list = []
    qdq_of: dict[str, str] = {}  # activation tensor -> its DQ output (shared by all readers)
    new_inits = []
    quantized: set[str] = set()
    skipped = []

    for node_name, index, fp32_tensor in targets:
        node = by_name.get(node_name)
        if node is None:
            raise PrecisionError(f"MatMul {node_name!r} of the FP32 graph is missing from the hybrid graph")
        current = node.input[index]  # the FP16 tensor this MatMul reads (maybe a cast of fp32_tensor)
        if current not in qdq_of:
            amax = float(activation_amax[fp32_tensor])
            if not np.isfinite(amax) or amax <= 0:
                skipped.append(f"{node_name}:{index} (calibrated range {amax})")
                continue
            # FP16 scale: amax/127 must stay a normal FP16 number
            scale = max(amax, 1e-2) / 127.0
            base = f"{NODE_PREFIX}/qdq/{current}"
            s_name, z_name = f"{base}/scale", f"{base}/zero_point"
            new_inits += [
                numpy_helper.from_array(np.array(scale, dtype=np.float16), s_name),
                numpy_helper.from_array(np.zeros((), dtype=np.int8), z_name),
            ]
            q = helper.make_node("QuantizeLinear", [current, s_name, z_name], [f"{base}/q"], name=f"{base}/Q")
            dq = helper.make_node("DequantizeLinear", [f"{base}/q", s_name, z_name], [f"{base}/dq"], name=f"{base}/DQ")
            qdq_after[current] += [q, dq]
            qdq_of[current] = dq.output[0]
        node.input[index] = qdq_of[current]
        quantized.add(node_name)

    # weights: symmetric per output channel, from the FP32 values
    for node_name in sorted(quantized):
        node = by_name[node_name]
        base_name = node.input[1].removesuffix(f"__{NODE_PREFIX}_fp16")
        if base_name not in fp32_inits:
            continue  # activation x activation MatMul ("all" mode)
        axis = _weight_axis(node)
        q, scale = quantize_weight(numpy_helper.to_array(fp32_inits[base_name]).astype(np.float32), axis)
        base = f"{NODE_PREFIX}/qdq/{base_name}"
        new_inits += [
            numpy_helper.from_array(q, f"{base}/int8"),
            numpy_helper.from_array(scale, f"{base}/scale"),
            numpy_helper.from_array(np.zeros(scale.shape, dtype=np.int8), f"{base}/zero_point"),
        ]
        dq = helper.make_node("DequantizeLinear", [f"{base}/int8", f"{base}/scale", f"{base}/zero_point"],
                              [f"{base}/dq"], name=f"{base}/DQ", axis=axis)
        weight_dq.append(dq)
        node.input[1] = dq.output[0]

    g.initializer.extend(new_inits)
    used = {x for n in list(g.node) + weight_dq for x in n.input}
    used |= {x for pair in qdq_after.values() for n in pair for x in n.input}
    keep = [t for t in g.initializer if t.name in used]  # FP16 weight copies nobody reads any more go
    del g.initializer[:]
    g.initializer.extend(keep)

    ordered = list(weight_dq)
    for vi in g.input:
        ordered += qdq_after.pop(vi.name, [])
    for n in g.node:
        ordered.append(n)
        for o in n.output:
            ordered += qdq_after.pop(o, [])
    if qdq_after:
        raise PrecisionError(f"Q/DQ anchors without a producer: {sorted(qdq_after)[:3]}")
    del g.node[:]
    g.node.extend(ordered)
    del g.value_info[:]
    finish(m)
    return m, len(quantized), skipped

