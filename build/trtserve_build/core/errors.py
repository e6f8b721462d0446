"""The build's errors: one root, one class per kind of failure.

Every error the build raises on purpose derives from :class:`BuildError`, so the CLI reports
each with its message (and exit status 2 for a bad spec, 1 otherwise) instead of a traceback.
"""
from __future__ import annotations


class BuildError(Exception):
    """Root of every error the build raises on purpose; the message says what to do."""


class SpecError(BuildError, ValueError):
    """The deployment spec is invalid; the message names the file and the field."""


class UnknownNameError(SpecError, KeyError):
    """A name (task, dataset) that its registry does not know; the message lists the known ones."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0])


class DatasetError(BuildError, RuntimeError):
    """A dataset could not be fetched or parsed; the message says where and why."""


class CheckpointNotFoundError(BuildError, FileNotFoundError):
    """The checkpoint reference names nothing available offline."""


class TrainingError(BuildError, RuntimeError):
    """Training ran but its result is unusable (e.g. held-out accuracy below the minimum)."""


class ExportError(BuildError, RuntimeError):
    """Export failed; the message says why."""


class ToleranceError(BuildError, RuntimeError):
    """Outputs disagree with their reference beyond a tolerance or gate; the message carries the numbers."""


class NonFiniteOutputError(ToleranceError):
    """Outputs containing NaN or Inf beyond the gate (default: none allowed)."""


class PrecisionError(BuildError, RuntimeError):
    """A precision transformation cannot be applied, or produced an invalid graph."""


class DuplicateCastError(PrecisionError):
    """The transformed graph casts the same tensor to the same type more than once, or back and forth."""


class CalibrationError(BuildError, RuntimeError):
    """Calibration could not produce a usable range; the message says for which tensor."""


class TensorRTUnavailableError(BuildError, RuntimeError):
    """No usable TensorRT builder in this environment (or an unknown flavour was forced)."""


class EngineBuildError(BuildError, RuntimeError):
    """Parsing the ONNX file or building the plan failed; the message says what to do."""


class TorchScriptError(BuildError, RuntimeError):
    """The TorchScript build failed; the message says why and what to do."""


class ExecutorUnavailableError(BuildError, RuntimeError):
    """No executor can run a graph faithfully here; the message lists why each was refused."""


class ConfigError(BuildError, ValueError):
    """A generated or parsed Triton config is inconsistent."""


class RepositoryError(BuildError, RuntimeError):
    """The model repository cannot be written from the artifacts at hand."""
