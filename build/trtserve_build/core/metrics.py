"""The one tolerance check: how closely candidate rows follow reference rows, and the bound.

Used after every conversion: ONNX Runtime vs PyTorch (export), traced vs eager and converted
vs FP32 (TorchScript); the fidelity report's row metrics use :func:`cosine_rows` too.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import NonFiniteOutputError, ToleranceError


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of each row pair (float64); two all-zero rows count as 1."""
    a = a.astype(np.float64).reshape(len(a), -1)
    b = b.astype(np.float64).reshape(len(b), -1)
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    cos = (a * b).sum(axis=1) / np.maximum(na * nb, 1e-30)
    both_zero = (na == 0) & (nb == 0)
    return np.where(both_zero, 1.0, cos)


@dataclass(frozen=True)
class Agreement:
    """How closely ``candidate`` rows follow ``reference`` rows (finite rows only for cosine and diff)."""

    rows: int
    min_cosine: float
    max_abs_diff: float
    nonfinite_fraction: float

    @classmethod
    def measure(cls, reference: np.ndarray, candidate: np.ndarray) -> "Agreement":
        if reference.shape != candidate.shape:
            raise ToleranceError(f"output shape {candidate.shape} != reference {reference.shape}")
        ref = reference.astype(np.float64).reshape(len(reference), -1)
        cand = candidate.astype(np.float64).reshape(len(candidate), -1)
        finite = np.isfinite(cand).all(axis=-1)
        nonfinite = float(1.0 - finite.mean()) if len(cand) else 0.0
        if not finite.any():
            return cls(len(ref), float("nan"), float("inf"), nonfinite)
        r, c = ref[finite], cand[finite]
        return cls(len(ref), float(cosine_rows(r, c).min()), float(np.abs(r - c).max()), nonfinite)


def check_tolerance(reference: np.ndarray, candidate: np.ndarray, what: str, *, min_cosine: float,
                    atol: float | None = None, max_nonfinite_fraction: float = 0.0) -> Agreement:
    """Measure ``candidate`` against ``reference`` and raise with the numbers when a bound is missed.

    :class:`NonFiniteOutputError` when more rows than allowed hold NaN/Inf, otherwise
    :class:`ToleranceError` for a cosine below ``min_cosine`` or a max |diff| above ``atol``.
    """
    agreement = Agreement.measure(reference, candidate)
    if agreement.nonfinite_fraction > max_nonfinite_fraction:
        bad = round(agreement.nonfinite_fraction * agreement.rows)
        raise NonFiniteOutputError(
            f"{what}: {bad} of {agreement.rows} outputs contain NaN/Inf "
            f"({agreement.nonfinite_fraction:.1%}, allowed {max_nonfinite_fraction:.1%})")
    problems = []
    if not agreement.min_cosine >= min_cosine:  # also catches NaN
        problems.append(f"min cosine = {agreement.min_cosine:.7f} (required {min_cosine})")
    if atol is not None and agreement.max_abs_diff > atol:
        problems.append(f"max |diff| = {agreement.max_abs_diff:.3g} (allowed {atol:g})")
    if problems:
        raise ToleranceError(f"{what}: " + ", ".join(problems) + f" over {agreement.rows} texts")
    return agreement


# ---- the gates of a converted engine against FP32 ---------------------------------------------

#: Compiled or traced vs the same module run eagerly at the same precision: the same kernels run,
#: so anything below this is a tracing/compilation error (e.g. a data-dependent branch frozen with
#: the example inputs).
TRACE_MIN_COSINE = 0.99999
#: fp16/hybrid vs fp32 when the spec gates no cosine for that precision: loose enough for FP16
#: rounding (measured >= 0.9999 on MiniLM), tight enough to catch a broken conversion.
SANITY_MIN_COSINE = 0.999


@dataclass(frozen=True)
class PrecisionGate:
    """Bounds of the converted module against the FP32 reference."""

    min_cosine: float
    max_nonfinite_fraction: float = 0.0
    atol: float | None = None


def gate_for(spec, precision: str) -> PrecisionGate:
    """The spec's gate for ``precision`` (fp32: the export tolerances; others: [precision.gates])."""
    if precision == "fp32":
        return PrecisionGate(min_cosine=spec.export.min_cosine, atol=spec.export.atol)
    gate = spec.precision.gate(precision)
    nonfinite = gate.max_nonfinite_fraction if gate.max_nonfinite_fraction is not None else 0.0
    return PrecisionGate(min_cosine=gate.min_cosine if gate.min_cosine is not None else SANITY_MIN_COSINE,
                         max_nonfinite_fraction=nonfinite)
