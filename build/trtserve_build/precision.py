"""Precision stage: the exported FP32 ONNX graph -> a strongly typed ``fp16``/``hybrid``/``int8`` graph.

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
    scales from :mod:`trtserve_build.calibration`. Q/DQ run on FP16 tensors, which needs opset
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

    python -m trtserve_build.precision --spec deployments/embed.toml --precision int8
    python -m trtserve_build.precision --onnx model.onnx --precision hybrid --out hybrid.onnx
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16", "hybrid", "int8")
TRANSFORMED_PRECISIONS = ("fp16", "hybrid", "int8")

#: ONNX Runtime 1.31 refuses IR version 14 (what onnx 1.23's helpers write by default).
MAX_IR_VERSION = 13
#: Opset of int8 graphs: QuantizeLinear/DequantizeLinear on FP16 tensors need opset >= 19.
INT8_OPSET = 19
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


class PrecisionError(RuntimeError):
    """A precision transformation cannot be applied, or produced an invalid graph."""


class DuplicateCastError(PrecisionError):
    """The transformed graph casts the same tensor to the same type more than once, or back and forth."""


# ---------------------------------------------------------------------------------------
# The named FP32 policy
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Fp32Policy:
    """Which ops of a ``hybrid``/``int8`` graph stay in FP32 (the rest follow their inputs).

    ``op_types`` are kept in FP32 wherever they occur. ``decomposed_layernorm`` also keeps the
    whole LayerNorm subgraph that older exporters emit (ReduceMean, Sub, Pow, ReduceMean, Add,
    Sqrt, Div and the affine Mul/Add) in FP32: its Sub and Div are ordinary elementwise ops
    elsewhere (the GELU's ``x / sqrt(2)``), so they are matched as a pattern, not by type.
    """

    name: str
    op_types: frozenset[str]
    decomposed_layernorm: bool = True
    description: str = ""

    def extended(self, extra_ops: Iterable[str]) -> "Fp32Policy":
        extra = frozenset(extra_ops) - self.op_types
        if not extra:
            return self
        return Fp32Policy(
            name=f"{self.name}+{'+'.join(sorted(extra))}",
            op_types=self.op_types | extra,
            decomposed_layernorm=self.decomposed_layernorm,
            description=self.description,
        )

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "op_types": sorted(self.op_types),
            "decomposed_layernorm": self.decomposed_layernorm,
        }


#: The paper's hybrid policy: normalisations, softmax, reductions and the ops whose FP16
#: result overflows or loses everything first (x^n, exp, sqrt of a variance, log, 1/x).
HYBRID_POLICY = Fp32Policy(
    name="fp32-norms-softmax-reductions",
    op_types=frozenset({
        "LayerNormalization", "SimplifiedLayerNormalization", "GroupNormalization",
        "InstanceNormalization", "Softmax", "LogSoftmax",
        "ReduceMean", "ReduceSum", "ReduceSumSquare", "ReduceL2", "ReduceLogSumExp", "ReduceProd",
        "Pow", "Sqrt", "Exp", "Log", "Reciprocal", "CumSum",
    }),
    decomposed_layernorm=True,
    description=(
        "LayerNorm (fused or decomposed) and Softmax in FP32, plus every reduction and the "
        "overflow-prone elementwise ops; MatMul/Gemm and weights in FP16."
    ),
)
#: ``fp16``: nothing is kept in FP32.
FP16_POLICY = Fp32Policy(name="none", op_types=frozenset(), decomposed_layernorm=False,
                         description="every float op in FP16")


def policy_for(precision: str, extra_ops: Iterable[str] = ()) -> Fp32Policy:
    """The FP32 policy of ``precision``, extended by a spec's ``fp32_ops_extra``."""
    if precision == "fp16":
        if tuple(extra_ops):
            return FP16_POLICY.extended(extra_ops)
        return FP16_POLICY
    if precision in ("hybrid", "int8"):
        return HYBRID_POLICY.extended(extra_ops)
    raise ValueError(f"no FP32 policy for precision {precision!r}; known: {TRANSFORMED_PRECISIONS}")


# ---------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------
@dataclass
class TransformReport:
    """What a transformation did; written next to the transformed graph as ``<precision>.json``."""

    precision: str
    policy: dict
    opset: int
    nodes: int
    fp16_nodes: int
    fp32_nodes: int
    fp32_ops: dict[str, int]
    casts_inserted: int
    constants_fp16: int
    constants_duplicated: int
    clamped_values: int
    underflowed_values: int
    quantized_matmuls: int = 0
    unquantized_matmuls: list[str] = field(default_factory=list)
    calibration: dict | None = None
    source_sha256: str = ""
    onnx_sha256: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"


# ---------------------------------------------------------------------------------------
# Graph helpers
# ---------------------------------------------------------------------------------------
def _onnx():
    import onnx

    return onnx


def _name_nodes(graph) -> None:
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
    onnx = _onnx()
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


def _is_initializer_like(node) -> bool:
    return node.op_type == "Constant" and any(a.name == "value" for a in node.attribute)


def _consumers(graph) -> dict[str, list[tuple[int, int]]]:
    out: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for i, node in enumerate(graph.node):
        for j, name in enumerate(node.input):
            if name:
                out[name].append((i, j))
    return out


def _producers(graph) -> dict[str, int]:
    return {name: i for i, node in enumerate(graph.node) for name in node.output if name}


def _to_fp16(array: np.ndarray) -> tuple[np.ndarray, int, int]:
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
    consumers = _consumers(graph)
    nodes = graph.node

    def only(tensor: str, op_types: tuple[str, ...]) -> list[int]:
        return [i for i, _ in consumers.get(tensor, []) if nodes[i].op_type in op_types]

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
                                    if len(nxt) == 1 and len(consumers[tail]) == 1 and any(
                                        n in const_names for n in nodes[nxt[0]].input if n != tail
                                    ):
                                        chain.add(nxt[0])
                                        tail = nodes[nxt[0]].output[0]
                                found |= chain
    return found


# ---------------------------------------------------------------------------------------
# The retyping transformation (fp16 / hybrid)
# ---------------------------------------------------------------------------------------
F32 = 1   # onnx.TensorProto.FLOAT
F16 = 10  # onnx.TensorProto.FLOAT16
_TYPE_NAME = {F32: "fp32", F16: "fp16"}


def _cast_name(tensor: str, to: int) -> str:
    return f"{tensor}__{NODE_PREFIX}_{_TYPE_NAME[to]}"


def retype(model, precision: str, policy: Fp32Policy):
    """Return ``(new_model, report)``: ``model`` (FP32) with ``precision``'s types assigned.

    ``model`` is not modified. Raises :class:`PrecisionError` for graphs this cannot handle.
    """
    onnx = _onnx()
    if precision not in ("fp16", "hybrid"):
        raise ValueError(f"retype handles fp16 and hybrid, not {precision!r}")
    m = onnx.ModelProto()
    m.CopyFrom(model)
    r = _Retyper(m, precision, policy)
    r.assign_precisions()
    r.retype_constants()
    r.retype_attributes()
    r.insert_casts()
    del m.graph.value_info[:]  # the retyped tensors' types are re-derived by inference
    _finish(m)
    return m, r.report(m)


class _Retyper:
    """The steps of :func:`retype` on one graph (see the module docstring for the rules)."""

    def __init__(self, model, precision: str, policy: Fp32Policy) -> None:
        onnx = _onnx()
        self.model, self.g, self.precision, self.policy = model, model.graph, precision, policy
        _name_nodes(self.g)
        for opset in model.opset_import:
            if opset.domain not in ("", "ai.onnx"):
                raise PrecisionError(f"custom opset domain {opset.domain!r}: only standard ONNX ops can be retyped")
        self.types = infer_types(model)
        bad = sorted({t for t in self.types.values() if t in (F16, 11, 16)})  # fp16, double, bf16
        if bad:
            raise PrecisionError(f"the source graph already holds non-FP32 float tensors (types {bad}); give the FP32 export")
        self.nodes = list(self.g.node)
        self.consumers = _consumers(self.g)
        self.producer = _producers(self.g)
        self.init_names = {t.name for t in self.g.initializer}
        self.const_nodes = {i for i, n in enumerate(self.nodes) if _is_initializer_like(n)}
        self.const_names = self.init_names | {self.nodes[i].output[0] for i in self.const_nodes}
        self.graph_outputs = {o.name for o in self.g.output}
        for n in self.nodes:
            if n.op_type in UNSUPPORTED_FLOAT_OPS and any(self.is_float(x) for x in list(n.input) + list(n.output)):
                raise PrecisionError(f"node {n.name} ({n.op_type}) touches float tensors; {precision} cannot retype it")
            if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in n.attribute):
                raise PrecisionError(f"node {n.name} ({n.op_type}) has subgraphs; not supported")
        self.prec: dict[int, int] = {}  # node index -> F16 / F32, for nodes that compute on floats
        self.produced: dict[str, int] = {}  # float tensor -> the type it is produced in
        self.const_variant: dict[tuple[str, int], str] = {}  # (constant, type) -> tensor to read
        self.extra_const_nodes: dict[int, list] = defaultdict(list)
        self.casts: dict[tuple[str, int], object] = {}
        self.casts_after: dict[str, list] = defaultdict(list)
        self.counts = Counter()

    def is_float(self, name: str) -> bool:
        return bool(name) and self.types.get(name) == F32

    def fp16_seed(self, i: int) -> bool:
        n = self.nodes[i]
        if n.op_type in FP16_SEED_OPS:
            return True
        # an embedding lookup reads a weight table: FP16 weights
        return n.op_type == "Gather" and n.input[0] in self.const_names and self.is_float(n.input[0])

    def wanted(self, tensor: str) -> set[int]:
        """The types the (already typed) consumers of ``tensor`` read it in."""
        want: set[int] = set()
        for c, j in self.consumers.get(tensor, []):
            if self.nodes[c].op_type in TYPE_AGNOSTIC_INPUT_OPS and j == 0:
                continue
            if c in self.prec:
                want.add(self.prec[c])
        if tensor in self.graph_outputs:
            want.add(F32)
        return want

    # 1.-4. ---------------------------------------------------------------------------
    def assign_precisions(self) -> None:
        nodes, is_float = self.nodes, self.is_float
        keep_fp32 = {i for i, n in enumerate(nodes) if n.op_type in self.policy.op_types}
        if self.policy.decomposed_layernorm:
            keep_fp32 |= decomposed_layernorm_nodes(self.g, self.const_names)

        # sources: float outputs computed from constants and non-float inputs only
        source_tensors: set[str] = set()
        source_nodes: list[int] = []
        for i, n in enumerate(nodes):
            if i in self.const_nodes or i in keep_fp32 or self.fp16_seed(i) or not any(is_float(o) for o in n.output):
                continue
            if all(x in self.const_names or x in source_tensors for x in n.input if is_float(x)):
                source_nodes.append(i)
                source_tensors.update(o for o in n.output if is_float(o))

        # seeds and followers, in topological order (also ops that read floats but return none)
        source_set = set(source_nodes)
        for i, n in enumerate(nodes):
            if i in self.const_nodes or i in source_set:
                continue
            float_in = [x for x in n.input if is_float(x)]
            if not any(is_float(o) for o in n.output) and (n.op_type in TYPE_AGNOSTIC_INPUT_OPS or not float_in):
                continue  # Shape, Cast-to-int, integer ops: nothing to type
            if i in keep_fp32:
                self.prec[i] = F32
            elif self.fp16_seed(i) or self.precision == "fp16":
                self.prec[i] = F16
            else:
                computed = [x for x in float_in if x not in self.const_names and x not in source_tensors]
                from_fp32 = [self.prec.get(self.producer[x], F32) if x in self.producer else F32 for x in computed]
                # FP32 iff every computed input is FP32; a comparison of sources/constants: FP32
                self.prec[i] = F32 if all(p == F32 for p in from_fp32) else F16

        # sources take what their consumers want (reverse order: sources feed sources)
        for i in reversed(source_nodes):
            want = set().union(*(self.wanted(o) for o in nodes[i].output if is_float(o)))
            self.prec[i] = F16 if F16 in want or (not want and self.precision == "fp16") else F32

        for i, t in self.prec.items():
            for o in nodes[i].output:
                if is_float(o):
                    self.produced[o] = t
        for vi in self.g.input:
            if is_float(vi.name):
                self.produced[vi.name] = F32

    # 5. -------------------------------------------------------------------------------
    def retype_constants(self) -> None:
        """Every FP32 constant in each type its consumers read (two copies when both)."""
        from onnx import helper, numpy_helper

        nodes = self.nodes
        const_tensors = {t.name: t for t in self.g.initializer}
        const_node_of = {nodes[i].output[0]: i for i in self.const_nodes}
        for name, i in const_node_of.items():
            const_tensors[name] = next(a.t for a in nodes[i].attribute if a.name == "value")
        new_inits = []
        for name, tensor in const_tensors.items():
            if tensor.data_type != F32:
                continue
            want = self.wanted(name) or {F32}
            variants = {F32: name} if F32 in want else {}
            if F16 in want:
                variants[F16] = name if F32 not in want else f"{name}__{NODE_PREFIX}_fp16"
                half = numpy_helper.from_array(self._half(numpy_helper.to_array(tensor)), variants[F16])
                self.counts["fp16_constants"] += 1
                self.counts["duplicated"] += int(F32 in want)
                if name in const_node_of:
                    k = const_node_of[name]
                    if F32 in want:
                        self.extra_const_nodes[k].append(helper.make_node(
                            "Constant", [], [variants[F16]], name=f"{nodes[k].name}__{NODE_PREFIX}_fp16", value=half))
                    else:
                        next(a for a in nodes[k].attribute if a.name == "value").t.CopyFrom(half)
                elif F32 in want:
                    new_inits.append(half)
                else:
                    tensor.CopyFrom(half)
            for t, v in variants.items():
                self.const_variant[(name, t)] = v
                self.produced[v] = t
        self.g.initializer.extend(new_inits)

    def _half(self, array: np.ndarray) -> np.ndarray:
        half, clamped, underflowed = _to_fp16(array)
        self.counts["clamped"] += clamped
        self.counts["underflowed"] += underflowed
        return half

    # 6. -------------------------------------------------------------------------------
    def retype_attributes(self) -> None:
        """FP16 nodes that create floats from attributes: Cast(to=FLOAT), ConstantOfShape."""
        from onnx import numpy_helper

        for i, t in self.prec.items():
            n = self.nodes[i]
            if t != F16:
                continue
            for a in n.attribute:
                if n.op_type == "Cast" and a.name == "to" and a.i == F32:
                    a.i = F16
                elif n.op_type == "ConstantOfShape" and a.name == "value" and a.t.data_type == F32:
                    a.t.CopyFrom(numpy_helper.from_array(self._half(numpy_helper.to_array(a.t)), a.t.name))

    # 7.-9. ----------------------------------------------------------------------------
    def insert_casts(self) -> None:
        """Casts where a reader wants the other type: one per (tensor, type), right after the
        producer, shared by every reader. FP16 graph outputs are renamed and cast back to FP32
        under their public name."""
        renamed = {o.name: f"{o.name}__{NODE_PREFIX}_fp16" for o in self.g.output
                   if self.is_float(o.name) and self.produced.get(o.name) == F16}
        internal_of = {v: k for k, v in renamed.items()}
        for n in self.nodes:
            for k, name in enumerate(n.output):
                n.output[k] = renamed.get(name, name)
            for k, name in enumerate(n.input):
                n.input[k] = renamed.get(name, name)
        for public, internal in renamed.items():
            self.produced[internal] = F16
            self._add_cast(internal, F32, public)

        for i, n in enumerate(self.nodes):
            if i not in self.prec:
                continue
            for j, name in enumerate(list(n.input)):
                if not self.is_float(internal_of.get(name, name)):
                    continue
                if n.op_type in TYPE_AGNOSTIC_INPUT_OPS and j == 0:
                    continue
                n.input[j] = self._read_as(name, self.prec[i])

        ordered = [c for vi in self.g.input for c in self.casts_after.get(vi.name, [])]
        for i, n in enumerate(self.nodes):
            ordered.append(n)
            ordered.extend(self.extra_const_nodes.get(i, []))
            for o in n.output:
                ordered.extend(self.casts_after.get(o, []))
        del self.g.node[:]
        self.g.node.extend(ordered)

    def _add_cast(self, name: str, to: int, output: str) -> None:
        from onnx import helper

        cast = helper.make_node("Cast", [name], [output], to=to, name=f"{NODE_PREFIX}/cast/{name}->{_TYPE_NAME[to]}")
        self.casts[(name, to)] = cast
        self.casts_after[name].append(cast)

    def _read_as(self, name: str, want: int) -> str:
        if (name, want) in self.const_variant:
            return self.const_variant[(name, want)]
        have = self.produced.get(name)
        if have is None or have == want:
            return name
        if (name, want) not in self.casts:
            self._add_cast(name, want, _cast_name(name, want))
        return self.casts[(name, want)].output[0]

    def report(self, model) -> TransformReport:
        fp32_ops = Counter(self.nodes[i].op_type for i, t in self.prec.items() if t == F32)
        return TransformReport(
            precision=self.precision,
            policy=self.policy.to_dict(),
            opset=_default_opset(model),
            nodes=len(model.graph.node),
            fp16_nodes=sum(1 for t in self.prec.values() if t == F16),
            fp32_nodes=sum(1 for t in self.prec.values() if t == F32),
            fp32_ops=dict(sorted(fp32_ops.items())),
            casts_inserted=len(self.casts),
            constants_fp16=self.counts["fp16_constants"],
            constants_duplicated=self.counts["duplicated"],
            clamped_values=self.counts["clamped"],
            underflowed_values=self.counts["underflowed"],
        )


def _default_opset(model) -> int:
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def _finish(model) -> None:
    """IR version ORT accepts; output value types re-inferred; strict validation."""
    model.ir_version = min(model.ir_version, MAX_IR_VERSION)
    onnx = _onnx()
    inferred = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    model.graph.value_info.extend(inferred.graph.value_info)


# ---------------------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------------------
def check_graph(model) -> None:
    """Fail unless ``model`` is valid ONNX (full check) with no duplicated or round-trip casts."""
    onnx = _onnx()
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


# ---------------------------------------------------------------------------------------
# int8: explicit Q/DQ on MatMul/Gemm inputs
# ---------------------------------------------------------------------------------------
INT8_MATMUL_MODES = ("linear", "all")


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
    onnx = _onnx()
    from onnx import helper, numpy_helper

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
    _finish(m)
    return m, len(quantized), skipped


def to_opset(model, opset: int):
    """``model`` converted to ``opset`` (no-op when already there)."""
    current = _default_opset(model)
    if current == opset:
        return model
    if current > opset:
        raise PrecisionError(f"graph is opset {current}; cannot lower it to {opset}")
    from onnx import version_converter

    try:
        converted = version_converter.convert_version(model, opset)
    except Exception as e:  # noqa: BLE001
        raise PrecisionError(f"cannot convert the graph from opset {current} to {opset}: {e}") from e
    converted.ir_version = min(converted.ir_version, MAX_IR_VERSION)
    del converted.graph.value_info[:]
    return converted


# ---------------------------------------------------------------------------------------
# Entry points
# ---------------------------------------------------------------------------------------
def transform(
    model,
    precision: str,
    *,
    fp32_ops_extra: Sequence[str] = (),
    activation_amax: Mapping[str, float] | None = None,
    int8_matmuls: str = "linear",
):
    """``(model, report)`` for ``precision`` from the FP32 ``model`` (an ``onnx.ModelProto``).

    ``int8`` needs ``activation_amax`` (see :mod:`trtserve_build.calibration`).
    The result is checked: valid ONNX (full check), no duplicated or round-trip casts.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}; known: {PRECISIONS}")
    if precision == "fp32":
        onnx = _onnx()
        out = onnx.ModelProto()
        out.CopyFrom(model)
        return out, None
    policy = policy_for(precision, fp32_ops_extra)
    if precision == "int8":
        if activation_amax is None:
            raise PrecisionError("int8 needs calibrated activation ranges (run calibration first)")
        base = _named_copy(model)
        source = to_opset(base, max(INT8_OPSET, _default_opset(base)))
        hybrid, report = retype(source, "hybrid", policy)
        out, quantized, skipped = add_qdq(hybrid, base, activation_amax, int8_matmuls)
        report.precision = "int8"
        report.quantized_matmuls = quantized
        report.unquantized_matmuls = skipped
        report.nodes = len(out.graph.node)
        report.opset = _default_opset(out)
    else:
        out, report = retype(model, precision, policy)
    check_graph(out)
    return out, report


def _named_copy(model):
    onnx = _onnx()
    m = onnx.ModelProto()
    m.CopyFrom(model)
    _name_nodes(m.graph)
    return m


def precision_onnx_name(precision: str, export_file: str = "model.onnx") -> str:
    """File name of ``precision``'s graph in the export folder (fp32 is the export itself)."""
    return export_file if precision == "fp32" else f"{precision}.onnx"


# ---------------------------------------------------------------------------------------
# The spec-driven stage: <export dir>/<precision>.onnx (+ <precision>.json), cached
# ---------------------------------------------------------------------------------------
def precision_onnx_path(spec, precision: str) -> Path:
    """Where ``precision``'s graph of ``spec`` lives (fp32: the export itself)."""
    from .export import ONNX_FILE, export_dir

    return export_dir(spec) / precision_onnx_name(precision, ONNX_FILE)


def _report_path(onnx_path: Path) -> Path:
    return onnx_path.with_suffix(".json")


def _wanted_key(spec, precision: str, source_sha: str) -> dict:
    p = spec.precision
    key = {"source_sha256": source_sha, "policy": policy_for(precision, p.fp32_ops_extra).to_dict()}
    if precision == "int8":
        key["calibration"] = {"method": p.calibration_method, "percentile": p.calibration_percentile,
                              "samples": p.calibration_samples, "dataset": p.calibration_dataset,
                              "int8_matmuls": p.int8_matmuls}
    return key


def ensure_precision_onnx(spec, precision: str, *, force: bool = False) -> Path:
    """Make ``<export dir>/<precision>.onnx`` from the FP32 export (which must exist), unless a
    current one is there; returns its path. int8 calibrates first (cached too)."""
    onnx = _onnx()
    from .export import ONNX_FILE, export_dir, sha256_file

    if precision == "fp32":
        return export_dir(spec) / ONNX_FILE
    source = export_dir(spec) / ONNX_FILE
    if not source.is_file():
        raise PrecisionError(f"{spec.name}: no FP32 export at {source}; run `make engines` first")
    out = precision_onnx_path(spec, precision)
    source_sha = sha256_file(source)
    key = _wanted_key(spec, precision, source_sha)
    record = _report_path(out)
    if not force and out.is_file() and record.is_file():
        try:
            old = json.loads(record.read_text())
            if old.get("key") == key and old.get("onnx_sha256") == sha256_file(out):
                log.info("%s: %s graph is current (%s)", spec.name, precision, out)
                return out
        except (ValueError, OSError):
            pass
    model = onnx.load(str(source))
    amax, calib = None, None
    if precision == "int8":
        from .calibration import calibrate_spec
        from .fidelity import spec_encoder

        calib = calibrate_spec(spec, _named_copy(model), source_sha, export_dir(spec), spec_encoder(spec), force=force)
        amax = calib.amax
    transformed, report = transform(
        model, precision, fp32_ops_extra=spec.precision.fp32_ops_extra,
        activation_amax=amax, int8_matmuls=spec.precision.int8_matmuls,
    )
    tmp = out.with_name(f".{out.name}.tmp")
    onnx.save(transformed, str(tmp))
    tmp.replace(out)
    report.source_sha256 = source_sha
    report.onnx_sha256 = sha256_file(out)
    report.calibration = calib.summary() if calib is not None else None
    data = json.loads(report.to_json())
    data["key"] = key
    record.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    log.info("%s: wrote %s (%d FP32 / %d FP16 nodes, %d casts%s)", spec.name, out, report.fp32_nodes,
             report.fp16_nodes, report.casts_inserted,
             f", {report.quantized_matmuls} quantized MatMuls" if precision == "int8" else "")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m trtserve_build.precision",
        description="Make a precision variant of an FP32 encoder graph: from a deployment spec "
                    "(--spec, any precision, cached in its export folder) or from a file (--onnx/--out, fp16/hybrid).",
    )
    ap.add_argument("--precision", required=True, choices=TRANSFORMED_PRECISIONS)
    ap.add_argument("--spec", help="deployment spec TOML: writes <export dir>/<precision>.onnx (int8 calibrates)")
    ap.add_argument("--onnx", type=Path, help="an FP32 graph (with --out)")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--fp32-op", action="append", default=[], help="extra op type kept in FP32 (with --onnx; repeatable)")
    ap.add_argument("--force", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    onnx = _onnx()
    try:
        if args.spec:
            from .spec import SpecError, load_spec

            try:
                path = ensure_precision_onnx(load_spec(args.spec), args.precision, force=args.force)
            except SpecError as e:
                raise PrecisionError(str(e)) from e
            print(_report_path(path).read_text(), end="")
            return 0
        if not (args.onnx and args.out) or args.precision == "int8":
            ap.error("give --spec, or --onnx and --out for fp16/hybrid (int8 needs a spec for its calibration texts)")
        model, report = transform(onnx.load(str(args.onnx)), args.precision, fp32_ops_extra=args.fp32_op)
    except PrecisionError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    onnx.save(model, str(args.out))
    print(report.to_json(), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
