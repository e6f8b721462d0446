"""The build pipeline for one variant: train? -> export + check -> engine -> repository."""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Sequence

from .export import ONNX_FILE, export, export_dir
from .repository import generate_repository, is_current, repository_fingerprint
from .spec import DeploymentSpec, SpecError

log = logging.getLogger(__name__)

#: Precisions the engine stage implements today.
IMPLEMENTED_PRECISIONS = ("fp32",)


def with_precision(spec: DeploymentSpec, variant: str, precision: str | None) -> DeploymentSpec:
    if precision is None:
        return spec
    engines = dict(spec.engines)
    engines[variant] = dataclasses.replace(spec.engine(variant), precision=precision)
    return dataclasses.replace(spec, engines=engines)


def plan_path(spec: DeploymentSpec, precision: str) -> Path:
    return export_dir(spec) / "plans" / f"{precision}.plan"


def build_engine(spec: DeploymentSpec, variant: str, force: bool = False) -> Path | None:
    """Build the variant's engine; returns the plan path for TensorRT, None for ONNX Runtime."""
    engine = spec.engine(variant)
    if engine.precision not in IMPLEMENTED_PRECISIONS:
        raise SpecError(
            f"{spec.source}: [engine.{variant}] precision {engine.precision!r} is not implemented yet "
            f"(implemented: {IMPLEMENTED_PRECISIONS})"
        )
    if engine.backend == "onnxruntime":
        return None  # the exported, checked ONNX graph is the engine
    from .engine_trt import build_plan, detect_tensorrt, is_plan_current

    onnx_path = export_dir(spec) / ONNX_FILE
    plan = plan_path(spec, engine.precision)
    flavour = detect_tensorrt()
    if not force and is_plan_current(plan, onnx_path, engine.precision, flavour, spec=spec):
        log.info("%s: TensorRT plan is current (%s)", spec.name, plan)
        return plan
    plan.parent.mkdir(parents=True, exist_ok=True)
    record = build_plan(onnx_path, plan, spec, engine.precision, flavour=flavour)
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
