"""The named FP32 policies: which ops of a ``hybrid``/``int8`` graph stay in FP32."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from ..core.enums import TRANSFORMED_PRECISIONS

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

