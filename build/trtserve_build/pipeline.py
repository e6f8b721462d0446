"""The build pipeline for one variant: train? -> export + check -> engine -> repository."""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Sequence

from .export import export, export_dir
from .repository import generate_repository, is_current, repository_fingerprint
from .spec import DeploymentSpec, SpecError

log = logging.getLogger(__name__)

#: Precisions the engine stage implements (precision.py makes the non-fp32 graphs).
IMPLEMENTED_PRECISIONS = ("fp32", "fp16", "hybrid", "int8")


def with_precision(spec: DeploymentSpec, variant: str, precision: str | None) -> DeploymentSpec:
    if precision is None:
        return spec
    engines = dict(spec.engines)
    engines[variant] = dataclasses.replace(spec.engine(variant), precision=precision)
    return dataclasses.replace(spec, engines=engines)


def plan_path(spec: DeploymentSpec, precision: str) -> Path:
    return export_dir(spec) / "plans" / f"{precision}.plan"


def build_engine(spec: DeploymentSpec, variant: str, force: bool = False, *, gate: bool = True) -> Path | None:
    """Build the variant's engine; returns the plan (TensorRT) or TorchScript file (torch), None for ONNX Runtime.

    A non-fp32 precision first turns the FP32 export into ``<export dir>/<precision>.onnx``
    (precision.py; int8 calibrates); that graph is what TensorRT builds and what the cpu
    variant serves. Then the fidelity gate runs on real text (cached per graph) and a failed
    gate stops the build with the numbers.
    """
    from .precision import ensure_precision_onnx

    engine = spec.engine(variant)
    if engine.backend == "torch":
        # TorchScript made from the checkpoint in the engine's precision and checked against
        # FP32 on real text by the stage itself (torchscript.py); no ONNX graph is involved.
        from .torchscript import build_torchscript

        return build_torchscript(spec, variant, force=force)
    if engine.precision not in IMPLEMENTED_PRECISIONS:
        raise SpecError(
            f"{spec.source}: [engine.{variant}] precision {engine.precision!r} is not implemented "
            f"(implemented: {IMPLEMENTED_PRECISIONS})"
        )
    onnx_path = ensure_precision_onnx(spec, engine.precision, force=force)
    plan = None
    if engine.backend == "tensorrt":
        plan = _build_plan(spec, engine.precision, onnx_path, force)
    if gate and engine.precision != "fp32":
        from .fidelity import gate_after_build

        gate_after_build(spec, engine.precision, force=force)
    return plan  # None for ONNX Runtime: the (transformed, checked) ONNX graph is the engine


def _build_plan(spec: DeploymentSpec, precision: str, onnx_path: Path, force: bool) -> Path:
    from .engine_trt import build_plan, detect_tensorrt, is_plan_current

    plan = plan_path(spec, precision)
    flavour = detect_tensorrt()
    if not force and is_plan_current(plan, onnx_path, precision, flavour, spec=spec):
        log.info("%s: TensorRT plan is current (%s)", spec.name, plan)
        return plan
    plan.parent.mkdir(parents=True, exist_ok=True)
    record = build_plan(onnx_path, plan, spec, precision, flavour=flavour)
    log.info("%s: built %s with %s %s in %.1fs", spec.name, plan, record.tensorrt_flavour, record.tensorrt_version, record.build_seconds)
    return plan


def build_variant(
    specs: Sequence[DeploymentSpec], variant: str, out_dir: Path, *, precision: str | None = None, force: bool = False
) -> Path:
    """Run every stage for every spec and write the model repository for ``variant``.

    Every stage is cached by what it was made from; ``force`` rebuilds everything.
    """
    specs = [with_precision(s, variant, precision) for s in specs]
    plans: dict[str, Path] = {}
    for spec in specs:
        export(spec, force=force)  # cached by fingerprint; checked against PyTorch whenever (re)built
        plan = build_engine(spec, variant, force)
        if plan is not None:
            plans[spec.name] = plan
    fingerprint = repository_fingerprint(specs, variant, plans)
    if not force and is_current(out_dir, fingerprint):
        log.info("model repository %s is current", out_dir)
        return out_dir
    return generate_repository(specs, variant, out_dir, plans)
