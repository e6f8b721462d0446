"""The build for one variant: train? -> export + check -> precision graph -> engine -> gate ->
model repository. Each stage takes its inputs as arguments; this module passes them along."""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
from pathlib import Path
from typing import Sequence

from ..core.enums import FUSED_FORMATS, PRECISIONS
from ..core.errors import EngineBuildError, ExecutorUnavailableError, PrecisionError, SpecError, ToleranceError
from ..core.paths import TOKENIZER_FILE, export_dir, fused_path, plan_path, torchscript_path
from ..core.records import ExportManifest
from ..core.spec import DeploymentSpec
from ..core.task_spec import encoder_max_batch_size
from ..data.texts import validation_texts
from ..data.tokenizer import bucket_tokenizer
from ..models.loader import load_task_model
from ..runtime.tensorrt import detect_tensorrt
from ..stages import compiled as compiled_stage
from ..stages import repository as repository_stage
from ..stages import tensorrt as tensorrt_stage
from ..stages import torchscript as torchscript_stage
from ..stages.generate_config import generate_config, settings_from_spec
from ..stages.triton_config import deployment_configs
from .steps import export, precision_graph
from .validate import gate_after_build

log = logging.getLogger(__name__)


def with_precision(spec: DeploymentSpec, variant: str, precision: str | None) -> DeploymentSpec:
    if precision is None:
        return spec
    engines = dict(spec.engines)
    engines[variant] = dataclasses.replace(spec.engine(variant), precision=precision)
    return dataclasses.replace(spec, engines=engines)


def build_engine(spec: DeploymentSpec, variant: str, force: bool = False, *, gate: bool = True) -> Path | None:
    """Build the variant's engine; returns the plan (TensorRT) or TorchScript file (torch), None for ONNX Runtime.

    A non-fp32 precision first turns the FP32 export into ``<export dir>/<precision>.onnx``
    (int8 calibrates); that graph is what TensorRT builds and what the cpu variant serves. Then
    the fidelity gate runs on real text (cached per graph) and a failed gate stops the build
    with the numbers.
    """
    engine = spec.engine(variant)
    if spec.generation is not None:
        return None  # the generate model serves the checked export (onnxruntime) or the checkpoint (torch)
    if engine.backend == "torch":
        # TorchScript made from the checkpoint in the engine's precision and checked against
        # FP32 on real text by the stage itself; no ONNX graph is involved.
        return _build_torchscript(spec, variant, force)
    if engine.precision not in PRECISIONS:
        raise SpecError(f"{spec.source}: [engine.{variant}] precision {engine.precision!r} is not implemented "
                        f"(implemented: {PRECISIONS})")
    with _naming_architecture(spec, f"{engine.precision} {engine.backend} engine"):
        onnx_path = precision_graph(spec, engine.precision, force=force)
        plan = None
        if engine.backend == "tensorrt":
            plan = _build_plan(spec, engine.precision, onnx_path, force)
        if gate and engine.precision != "fp32":
            gate_after_build(spec, engine.precision, force=force)
    return plan  # None for ONNX Runtime: the (transformed, checked) ONNX graph is the engine


@contextlib.contextmanager
def _naming_architecture(spec: DeploymentSpec, what: str):
    """A stage that cannot make this architecture work (a parser failure, an FP16 overflow the
    gate catches) fails with a message that names the architecture and the reason."""
    try:
        yield
    except (PrecisionError, EngineBuildError, ToleranceError, ExecutorUnavailableError) as e:
        arch = ExportManifest.read(export_dir(spec)).architecture or "unregistered architecture"
        raise type(e)(f"{spec.name}: the {arch} {what} cannot be built: {e}") from e


def _build_plan(spec: DeploymentSpec, precision: str, onnx_path: Path, force: bool) -> Path:
    plan = plan_path(spec, precision)
    flavour = detect_tensorrt()
    if not force and tensorrt_stage.is_plan_current(plan, onnx_path, precision, flavour, spec=spec):
        log.info("%s: TensorRT plan is current (%s)", spec.name, plan)
        return plan
    record = tensorrt_stage.build_plan(onnx_path, plan, spec, precision, flavour=flavour)
    log.info("%s: built %s with %s %s in %.1fs", spec.name, plan, record.tensorrt_flavour, record.tensorrt_version,
             record.build_seconds)
    return plan


def _build_torchscript(spec: DeploymentSpec, variant: str, force: bool) -> Path:
    engine = spec.engine(variant)
    artifacts = export_dir(spec)
    manifest = ExportManifest.read(artifacts)

    def check_feeds():
        tok = bucket_tokenizer(artifacts / TOKENIZER_FILE, spec.model.max_sequence_length, spec.model.length_buckets,
                               manifest.pad_token_id, manifest.inputs)
        return tok.encode(validation_texts())

    def load_model():
        return load_task_model(manifest.checkpoint, spec.task, labels=spec.model.labels)

    if engine.engine_format in FUSED_FORMATS:
        # TRTSERVE_AOTI_DEVICE=cpu: a CPU AOTInductor package, for the tests (default: the stage's choice)
        device = os.environ.get("TRTSERVE_AOTI_DEVICE") if engine.engine_format == "aoti" else None
        return compiled_stage.build_compiled(
            spec, variant, manifest, fused_path(spec, engine.precision, engine.engine_format), load_model=load_model,
            check_feeds=check_feeds, max_batch=encoder_max_batch_size(spec), force=force, device=device)
    return torchscript_stage.build_torchscript(
        spec, variant, manifest, torchscript_path(spec, engine.precision, engine.attention),
        load_model=load_model, check_feeds=check_feeds, force=force)


def generate_repository(specs: Sequence[DeploymentSpec], variant: str, out_dir: Path,
                        plans: dict[str, Path] | None = None) -> Path:
    """The model repository of ``variant`` from the specs' exports (which must exist) and engines."""
    configs = {s.name: [generate_config(settings_from_spec(s, variant), s.name)] if s.generation is not None
               else deployment_configs(s, ExportManifest.read(export_dir(s)), variant) for s in specs}
    return repository_stage.generate_repository(specs, variant, out_dir, configs, plans)


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
    fingerprint = repository_stage.repository_fingerprint(specs, variant, plans)
    if not force and repository_stage.is_current(out_dir, fingerprint):
        log.info("model repository %s is current", out_dir)
        return out_dir
    return generate_repository(specs, variant, out_dir, plans)
