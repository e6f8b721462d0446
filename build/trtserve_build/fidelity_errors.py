"""The fidelity report's errors (shared by :mod:`.fidelity` and its executors)."""
from __future__ import annotations


class FidelityError(RuntimeError):
    """A precision variant failed its fidelity gate; the message carries the numbers."""


class ToleranceError(FidelityError):
    """Cosine, agreement or accuracy beyond the gate."""


class NonFiniteOutputError(FidelityError):
    """Outputs containing NaN or Inf beyond the gate (default: none allowed)."""


class ExecutorUnavailableError(FidelityError):
    """No executor can run a variant faithfully here; the message lists why each was refused."""
