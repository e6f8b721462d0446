"""ONNX graph basics shared by the precision transformations: types, node maps, checks.

Every node this package adds (casts, Q/DQ) is named with :data:`NODE_PREFIX`, so checks can
tell them apart from the exporter's.
"""
from __future__ import annotations

from collections import defaultdict

import numpy as np

from ..core.errors import DuplicateCastError, PrecisionError
from ..core.lazy import lazy_import

onnx = lazy_import("onnx")
version_converter = lazy_import("onnx.version_converter")

#: ONNX Runtime 1.31 refuses IR version 14 (what onnx 1.23's helpers write by default).
MAX_IR_VERSION = 13
FP16_MAX = float(np.finfo(np.float16).max)  # 65504
#: Name prefix of every node this module adds (casts, Q/DQ), so checks can tell them apart.
NODE_PREFIX = "trtserve"

#: Ops run in FP16 whatever their inputs are (the speed of the hybrid mode comes from these).
FP16_SEED_OPS = frozenset({"MatMul", "Gemm", "Conv", "ConvTranspose"})
#: Ops whose float input may have any type: no cast is ever inserted in front of them.
TYPE_AGNOSTIC_INPUT_OPS = frozenset({"Shape", "Size", "Cast"})
#: Ops this transformation does not know how to retype; a graph with one of them touching
#: floats is refused with a message instead of being converted wrongly.
UNSUPPORTED_FLOAT_OPS = frozenset({
    "If", "Loop", "Scan", "Resize", "Upsample", "EyeLike", "RandomNormal", "RandomUniform",
    "RandomNormalLike", "RandomUniformLike", "Bernoulli", "Multinomial", "QuantizeLinear",
    "DequantizeLinear", "DynamicQuantizeLinear", "QLinearMatMul", "MatMulInteger", "CastLike",
})


F32 = 1   # onnx.TensorProto.FLOAT
F16 = 10  # onnx.TensorProto.FLOAT16
TYPE_NAME = {F32: "fp32", F16: "fp16"}


def name_nodes(graph) -> None:
    """Give every node a unique name (calibration and Q/DQ insertion address nodes by name)."""
    seen: set[str] = set()
    for i, node in enumerate(graph.node):
        name = node.name or f"{node.op_type}_{i}"
        while name in seen:
            name = f"{name}_{i}"
        node.name = name
        seen.add(name)


def infer_types(model) -> dict[str, int]:
    """elem_type of every tensor of ``model`` (strict ONNX type inference; fails on bad graphs)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    except Exception as e:  # noqa: BLE001 - re-raised typed, with the cause
        raise PrecisionError(f"ONNX type inference failed: {e}") from e
    g = inferred.graph
    types: dict[str, int] = {}
    for vi in list(g.input) + list(g.output) + list(g.value_info):
        if vi.type.HasField("tensor_type"):
            types[vi.name] = vi.type.tensor_type.elem_type
    for init in g.initializer:
        types[init.name] = init.data_type
    for node in g.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    types[node.output[0]] = attr.t.data_type
    return types


def is_initializer_like(node) -> bool:
    return node.op_type == "Constant" and any(a.name == "value" for a in node.attribute)


def consumers(graph) -> dict[str, list[tuple[int, int]]]:
    out: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for i, node in enumerate(graph.node):
        for j, name in enumerate(node.input):
            if name:
                out[name].append((i, j))
    return out


def producers(graph) -> dict[str, int]:
    return {name: i for i, node in enumerate(graph.node) for name in node.output if name}


def to_fp16(array: np.ndarray) -> tuple[np.ndarray, int, int]:
    """FP32 -> FP16 with values beyond +-65504 clamped; returns (array, clamped, underflowed)."""
    a = np.asarray(array, dtype=np.float32)
    finite = np.isfinite(a)
    clamped = int((finite & (np.abs(a) > FP16_MAX)).sum())
    with np.errstate(over="ignore", invalid="ignore"):
        out = np.clip(a, -FP16_MAX, FP16_MAX).astype(np.float16)
        out = np.where(finite, out, a.astype(np.float16))  # +-inf/NaN stay what they were
    underflowed = int(((a != 0) & finite & (out == 0)).sum())
    return out, clamped, underflowed


# ---------------------------------------------------------------------------------------
# Decomposed LayerNorm
# ---------------------------------------------------------------------------------------
def decomposed_layernorm_nodes(graph, const_names: set[str]) -> set[int]:
    """Indices of the nodes of every decomposed LayerNorm subgraph::

        m = ReduceMean(x); d = Sub(x, m); v = ReduceMean(Pow(d, 2) | Mul(d, d))
        y = Div(d, Sqrt(Add(v, eps)))  [ * gamma ] [ + beta ]
    """
    readers = consumers(graph)
    nodes = graph.node

    def only(tensor: str, op_types: tuple[str, ...]) -> list[int]:
        return [i for i, _ in readers.get(tensor, []) if nodes[i].op_type in op_types]

    found: set[int] = set()
    for i, mean in enumerate(nodes):
        if mean.op_type != "ReduceMean":
            continue
        x = mean.input[0]
        for s in only(mean.output[0], ("Sub",)):
            if list(nodes[s].input) != [x, mean.output[0]]:
                continue
            d = nodes[s].output[0]
            for sq in only(d, ("Pow", "Mul")):
                sq_node = nodes[sq]
                if sq_node.op_type == "Mul" and list(sq_node.input) != [d, d]:
                    continue
                if sq_node.op_type == "Pow" and sq_node.input[1] not in const_names:
                    continue
                for var in only(sq_node.output[0], ("ReduceMean",)):
                    for add in only(nodes[var].output[0], ("Add",)):
                        for sqrt in only(nodes[add].output[0], ("Sqrt",)):
                            for div in only(nodes[sqrt].output[0], ("Div",)):
                                if list(nodes[div].input) != [d, nodes[sqrt].output[0]]:
                                    continue
                                chain = {i, s, sq, var, add, sqrt, div}
                                tail = nodes[div].output[0]
                                for op in ("Mul", "Add"):  # the affine part, when present
                                    nxt = only(tail, (op,))
                                    if len(nxt) == 1 and len(readers[tail]) == 1 and any(
                                        n in const_names for n in nodes[nxt[0]].input if n != tail
                                    ):
                                        chain.add(nxt[0])
                                        tail = nodes[nxt[0]].output[0]
                                found |= chain
    return found


def default_opset(model) -> int:
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def finish(model) -> None:
    """IR version ORT accepts; output value types re-inferred; strict validation."""
    model.ir_version = min(model.ir_version, MAX_IR_VERSION)
    inferred = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    model.graph.value_info.extend(inferred.graph.value_info)


# ---------------------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------------------
def check_graph(model) -> None:
    """Fail unless ``model`` is valid ONNX (full check) with no duplicated or round-trip casts."""
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as e:  # noqa: BLE001 - re-raised typed
        raise PrecisionError(f"transformed graph is not valid ONNX: {e}") from e
    check_casts(model)


def check_casts(model) -> None:
    """Raise :class:`DuplicateCastError` when a tensor is cast to the same type twice, or when a
    Cast's result is cast straight back to the type it came from."""
    g = model.graph
    types = infer_types(model)
    seen: dict[tuple[str, int], str] = {}
    producer = {o: n for n in g.node for o in n.output}
    problems = []
    for n in g.node:
        if n.op_type != "Cast":
            continue
        to = next(a.i for a in n.attribute if a.name == "to")
        key = (n.input[0], to)
        if key in seen:
            problems.append(f"{n.input[0]!r} cast to type {to} by both {seen[key]!r} and {n.name!r}")
        seen[key] = n.name
        src = producer.get(n.input[0])
        if src is not None and src.op_type == "Cast" and types.get(src.input[0]) == to:
            problems.append(f"{src.name!r} -> {n.name!r} casts {src.input[0]!r} away and back to type {to}")
    if problems:
        raise DuplicateCastError(f"{len(problems)} redundant cast(s): " + "; ".join(problems[:10]))


def count_casts(model) -> int:
    return sum(1 for n in model.graph.node if n.op_type == "Cast")


def to_opset(model, opset: int):
    """``model`` converted to ``opset`` (no-op when already there)."""
    current = default_opset(model)
    if current == opset:
        return model
    if current > opset:
        raise PrecisionError(f"graph is opset {current}; cannot lower it to {opset}")
    try:
        converted = version_converter.convert_version(model, opset)
    except Exception as e:  # noqa: BLE001
        raise PrecisionError(f"cannot convert the graph from opset {current} to {opset}: {e}") from e
    converted.ir_version = min(converted.ir_version, MAX_IR_VERSION)
    del converted.graph.value_info[:]
    return converted



def named_copy(model):
    """A copy of ``model`` whose nodes all have unique names."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    name_nodes(m.graph)
    return m


def drop_redundant_casts(model):
    """A copy of ``model`` without the casts that do nothing: a Cast to the type its input
    already has, or a second Cast of the same tensor to the same type (its readers take the
    first one's output). Exporters leave such casts (DeBERTa-v2's int64 -> int64 pairs, MPNet's
    repeated int64 cast of one tensor); the transform drops them before retyping, so the
    redundant-cast check of its result only ever fires on casts the transform itself made."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    types = infer_types(m)
    outputs = {o.name for o in m.graph.output}
    rename: dict[str, str] = {}
    first: dict[tuple[str, int], str] = {}
    keep = []
    for node in m.graph.node:  # topological order: every input is renamed before it is read
        for k, name in enumerate(node.input):
            if name in rename:
                node.input[k] = rename[name]
        if node.op_type == "Cast" and node.output[0] not in outputs:
            to = next(a.i for a in node.attribute if a.name == "to")
            source = node.input[0]
            if types.get(source) == to:
                rename[node.output[0]] = source
                continue
            if (source, to) in first:
                rename[node.output[0]] = first[(source, to)]
                continue
            first[(source, to)] = node.output[0]
        keep.append(node)
    del m.graph.node[:]
    m.graph.node.extend(keep)
    return m
