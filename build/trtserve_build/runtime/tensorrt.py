"""TensorRT at run time: which flavour is installed, and a built plan as an executor.

Two flavours share one API: ``tensorrt`` (full TensorRT 10.x/11.x, the production builder and
runtime, only inside the NGC containers) and ``tensorrt_rtx`` (pip ``tensorrt-rtx-cu13``, which
builds plans on a CPU-only machine; its plans do not load in Triton's ``tensorrt`` backend and
do not run on Hopper).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import numpy as np

from ..core.errors import ExecutorUnavailableError, TensorRTUnavailableError
from ..core.lazy import import_module, lazy_import

torch = lazy_import("torch")
polygraphy_trt = lazy_import("polygraphy.backend.trt")

#: Environment variable that forces one flavour: ``tensorrt`` or ``tensorrt_rtx``.
FLAVOUR_ENV = "TRTSERVE_TENSORRT"
FLAVOURS = ("tensorrt", "tensorrt_rtx")


@dataclass(frozen=True)
class TensorRTFlavour:
    module: ModuleType = field(repr=False, compare=False)
    #: ``"tensorrt"`` or ``"tensorrt_rtx"``.
    name: str
    version: str

    @property
    def is_rtx(self) -> bool:
        return self.name == "tensorrt_rtx"


_INSTALL_HINT = (
    "Build production plans inside the NGC TensorRT container (docker compose run engines), "
    "whose full TensorRT matches the serving Triton image; for CPU-only CI builds install "
    "TensorRT-RTX (pip install tensorrt-rtx-cu13==1.7.1.116, part of the 'build' extra)."
)


def import_flavour(name: str) -> TensorRTFlavour:
    try:
        module = import_module(name)
    except Exception as e:  # noqa: BLE001 - a broken stub install raises more than ImportError
        raise TensorRTUnavailableError(f"cannot import {name!r}: {e}. {_INSTALL_HINT}") from e
    # The PyPI 'tensorrt' meta packages and the lean/dispatch runtimes cannot build.
    if not hasattr(module, "Builder") or not hasattr(module, "OnnxParser"):
        raise TensorRTUnavailableError(
            f"{name!r} imports but has no Builder/OnnxParser (a runtime-only or stub install). {_INSTALL_HINT}"
        )
    return TensorRTFlavour(module=module, name=name, version=str(getattr(module, "__version__", "unknown")))


def detect_tensorrt() -> TensorRTFlavour:
    """The TensorRT flavour to build with.

    ``$TRTSERVE_TENSORRT`` (``tensorrt`` or ``tensorrt_rtx``) forces one; otherwise full
    ``tensorrt`` is preferred (the production path inside the NGC container), then
    ``tensorrt_rtx``. Raises :class:`TensorRTUnavailableError` when none can be used.
    """
    forced = os.environ.get(FLAVOUR_ENV, "").strip()
    if forced:
        if forced not in FLAVOURS:
            raise TensorRTUnavailableError(
                f"${FLAVOUR_ENV}={forced!r} is not a TensorRT flavour; use one of {FLAVOURS} or unset it"
            )
        return import_flavour(forced)
    errors = []
    for name in FLAVOURS:
        try:
            return import_flavour(name)
        except TensorRTUnavailableError as e:
            errors.append(str(e).split(". ", 1)[0])
    raise TensorRTUnavailableError(f"no TensorRT builder available ({'; '.join(errors)}). {_INSTALL_HINT}")



class TensorRTExecutor:
    """A built plan under TensorRT (via Polygraphy), where a runtime and a GPU can run it.

    Not exercised on the project machines: the GPU machine has no TensorRT, and TensorRT-RTX
    plans do not run on Hopper; the constructor says so and the next executor is used.
    """

    name = "tensorrt"

    def __init__(self, plan_path: Path | None) -> None:
        if plan_path is None or not Path(plan_path).is_file():
            raise ExecutorUnavailableError(f"{self.name}: no plan built for this variant (make engines VARIANT=gpu)")
        try:
            cuda = torch.cuda.is_available()
        except ImportError as e:
            raise ExecutorUnavailableError(f"{self.name}: torch missing ({e})") from e
        if not cuda:
            raise ExecutorUnavailableError(f"{self.name}: no CUDA device here")
        try:
            flavour = detect_tensorrt()
        except TensorRTUnavailableError as e:
            raise ExecutorUnavailableError(f"{self.name}: {e}") from e
        if flavour.is_rtx:
            os.environ["POLYGRAPHY_USE_TENSORRT_RTX"] = "1"
        self.plan_path = Path(plan_path)
        self.runner = None
        try:
            self.activate()
        except Exception as e:  # noqa: BLE001 - any deserialization failure: not runnable here
            raise ExecutorUnavailableError(f"{self.name}: cannot run {plan_path} here: {e}") from e
        self.label = f"{flavour.name} {flavour.version} ({torch.cuda.get_device_name()})"

    def activate(self) -> None:
        if self.runner is None:
            self.runner = polygraphy_trt.TrtRunner(polygraphy_trt.EngineFromBytes(self.plan_path.read_bytes()))
            self.runner.activate()

    def infer(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        out = self.runner.infer(feeds)
        return [np.asarray(v) for v in out.values()]

    def close(self) -> None:
        if self.runner is not None:
            self.runner.deactivate()
            self.runner = None
