"""The retyping transformation (fp16 / hybrid): FP32 graph -> strongly typed graph.

How types are assigned (one pass, no guessing from names): see :mod:`.transform`.
"""
from __future__ import annotations

from collections import Counter, defaultdict

import numpy as np

from ..core.errors import PrecisionError
from ..core.lazy import lazy_import
from .onnx_graph import (
    F16,
    F32,
    FP16_SEED_OPS,
    NODE_PREFIX,
    TYPE_AGNOSTIC_INPUT_OPS,
    TYPE_NAME,
    UNSUPPORTED_FLOAT_OPS,
    consumers,
    decomposed_layernorm_nodes,
    default_opset,
    finish,
    infer_types,
    is_initializer_like,
    name_nodes,
    producers,
    to_fp16,
)
from .policy import Fp32Policy
from .report import TransformReport

onnx = lazy_import("onnx")
numpy_helper = lazy_import("onnx.numpy_helper")
helper = lazy_import("onnx.helper")


def _cast_name(tensor: str, to: int) -> str:
    return f"{tensor}__{NODE_PREFIX}_{TYPE_NAME[to]}"


def retype(model, precision: str, policy: Fp32Policy):
    """Return ``(new_model, report)``: ``model`` (FP32) with ``precision``'s types assigned.

    ``model`` is not modified. Raises :class:`PrecisionError` for graphs this cannot handle.
    """
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
    finish(m)
    return m, r.report(m)


class _Retyper:
    """The steps of :func:`retype` on one graph (see the module docstring for the rules)."""

    def __init__(self, model, precision: str, policy: Fp32Policy) -> None:
        self.model, self.g, self.precision, self.policy = model, model.graph, precision, policy
        name_nodes(self.g)
        for opset in model.opset_import:
            if opset.domain not in ("", "ai.onnx"):
                raise PrecisionError(f"custom opset domain {opset.domain!r}: only standard ONNX ops can be retyped")
        self.types = infer_types(model)
        bad = sorted({t for t in self.types.values() if t in (F16, 11, 16)})  # fp16, double, bf16
        if bad:
            raise PrecisionError(f"the source graph already holds non-FP32 float tensors (types {bad}); give the FP32 export")
        self.nodes = list(self.g.node)
        self.consumers = consumers(self.g)
        self.producer = producers(self.g)
        self.init_names = {t.name for t in self.g.initializer}
        self.const_nodes = {i for i, n in enumerate(self.nodes) if is_initializer_like(n)}
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
        half, clamped, underflowed = to_fp16(array)
        self.counts["clamped"] += clamped
        self.counts["underflowed"] += underflowed
        return half

    # 6. -------------------------------------------------------------------------------
    def retype_attributes(self) -> None:
        """FP16 nodes that create floats from attributes: Cast(to=FLOAT), ConstantOfShape."""
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
        cast = helper.make_node("Cast", [name], [output], to=to, name=f"{NODE_PREFIX}/cast/{name}->{TYPE_NAME[to]}")
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
            opset=default_opset(model),
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

