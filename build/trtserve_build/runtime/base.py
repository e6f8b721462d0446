"""The executor protocol every runtime follows (ONNX Runtime, TensorRT, the FP16-faithful
interpreter): construct (refusing with :class:`ExecutorUnavailableError` what it cannot run
faithfully), ``activate()``, ``infer(feeds)`` any number of times, ``close()``."""
from __future__ import annotations

from typing import Protocol

import numpy as np


class Executor(Protocol):
    #: Short name, e.g. "onnxruntime-cpu".
    name: str

    @property
    def label(self) -> str:
        """What ran, for reports: name, version, device."""

    def activate(self) -> None:
        """Acquire what inference needs (sessions, device memory)."""

    def infer(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Run one batch: {input name: array} -> the graph's outputs in order."""

    def close(self) -> None:
        """Release what ``activate`` acquired."""
