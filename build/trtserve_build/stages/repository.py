"""Repository stage: write a Triton model repository for one variant from specs + artifacts.

Layout (per deployment ``<name>``)::

    <repo>/<name>/config.pbtxt, 1/                      ensemble
    <repo>/<name>_tokenizer/config.pbtxt, 1/model.py, 1/tokenizer.json, 1/trtserve_backend/
    <repo>/<name>_encoder/config.pbtxt, 1/model.onnx + model.py (cpu) | 1/model.plan (gpu)
                                                        | 1/model.pt + model.py (gpu_torch)
    <repo>/<name>_postprocess/config.pbtxt, 1/model.py, 1/trtserve_backend/

or, in the single topology (the engine runs in Python: onnxruntime, torch), one model::

    <repo>/<name>/config.pbtxt, 1/model.py, 1/tokenizer.json, 1/model.onnx | 1/model.pt, 1/trtserve_backend/

or, for generation (a decoder: stages/generate_config.py), one decoupled, streaming model::

    <repo>/<name>/config.pbtxt, 1/model.py (generate.py), 1/tokenizer.json, 1/model.onnx | 1/checkpoint/, ...

Python models get a copy of the one ``trtserve_backend`` package and of the ensemble
contract (``trtserve_contract``), so the repository is self-contained (the NGC container needs
only ``tokenizers`` and ``onnxruntime`` installed).
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Mapping, Sequence

import trtserve_backend
import trtserve_contract
from trtserve_backend.parameters import GenerateParameters
from tritonclient.grpc import model_config_pb2 as mc

from ..core.enums import FUSED_FORMATS
from ..core.errors import RepositoryError
from ..core.files import building, sha256_file
from ..core.pbtxt import write_config
from ..core.paths import (
    ONNX_FILE,
    PLAN_FILE,
    PYTHON_MODEL_FILE,
    REPOSITORY_STAMP_FILE,
    TOKENIZER_FILE,
    TORCHSCRIPT_FILE,
    export_dir,
    full_rows_path,
    fused_engine_name,
    precision_onnx_path,
    record_path,
)
from ..core.records import ExportManifest, artifact_sha256
from ..core.spec import DeploymentSpec
from ..core.stamps import content_digest, read_json, write_stamp

STAMP_FILE = REPOSITORY_STAMP_FILE
BACKEND_DIR = Path(trtserve_backend.__file__).parent
CONTRACT_DIR = Path(trtserve_contract.__file__).parent
#: model role -> the Python model implementation copied to 1/model.py
PYTHON_MODELS = {
    "tokenizer": BACKEND_DIR / "triton_models" / "tokenizer.py",
    "onnx_encoder": BACKEND_DIR / "triton_models" / "onnx_encoder.py",
    "torch_encoder": BACKEND_DIR / "triton_models" / "torch_encoder.py",
    "postprocess": BACKEND_DIR / "triton_models" / "postprocess.py",
    "pipeline": BACKEND_DIR / "triton_models" / "pipeline.py",
    "generate": BACKEND_DIR / "triton_models" / "generate.py",
}


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _install_python_model(version: Path, role: str) -> None:
    shutil.copy2(PYTHON_MODELS[role], version / PYTHON_MODEL_FILE)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(BACKEND_DIR, version / "trtserve_backend", ignore=ignore)
    shutil.copytree(CONTRACT_DIR, version / "trtserve_contract", ignore=ignore)


def _backend_digest() -> str:
    """The Python-model code copied into the repository, by content."""
    return content_digest(BACKEND_DIR, "*.py") + content_digest(CONTRACT_DIR, "*.py")


def repository_fingerprint(specs: Sequence[DeploymentSpec], variant: str, plans: dict[str, Path]) -> dict:
    """What a generated repository was made from; equal stamps mean nothing to regenerate."""
    return {
        "variant": variant,
        "backend_code": _backend_digest(),
        # "auto" instance counts are sized from the cores of the generating host
        "cores": os.cpu_count(),
        "deployments": {
            s.name: {
                "spec": s.fingerprint(),
                "export": ExportManifest.read(export_dir(s)).fingerprint,
                "plan": _plan_sha(plans.get(s.name)),
            }
            for s in specs
        },
    }


def _plan_sha(plan: Path | None) -> str | None:
    if plan is None:
        return None
    return artifact_sha256(record_path(plan)) or sha256_file(plan)  # by content, never by mtime


def _copy_engine_record(engine_file: Path, model_dir: Path) -> None:
    """The engine's build record, beside (not inside) the version folder."""
    record = record_path(engine_file)
    if record.exists():
        shutil.copy2(record, model_dir / "engine_record.json")


def is_current(out_dir: Path, fingerprint: dict) -> bool:
    return read_json(out_dir / STAMP_FILE) == fingerprint


def generate_repository(
    specs: Sequence[DeploymentSpec], variant: str, out_dir: Path, configs: Mapping[str, Sequence[mc.ModelConfig]],
    plans: dict[str, Path] | None = None,
) -> Path:
    """Write the whole repository for ``variant`` into ``out_dir`` (replaced atomically).

    ``configs``: per deployment name, its model configs (the triton_config stage's
    ``deployment_configs``, ensemble first); ``plans``: the engine file per deployment
    (TensorRT plan or TorchScript; none for ONNX Runtime).
    """
    plans = plans or {}
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise RepositoryError(f"deployment names must be unique, got {names}")
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with building(out_dir) as tmp:
        for spec in specs:
            _write_deployment(spec, variant, tmp, configs[spec.name], plans.get(spec.name))
        write_stamp(tmp / STAMP_FILE, repository_fingerprint(specs, variant, plans))
    return out_dir


def _write_deployment(spec: DeploymentSpec, variant: str, root: Path, configs: Sequence[mc.ModelConfig],
                      plan: Path | None) -> None:
    artifacts = export_dir(spec)
    engine = spec.engine(variant)
    if spec.generation is not None:  # one decoupled model: the export (onnxruntime) or the checkpoint (torch)
        engine_file = precision_onnx_path(spec, "fp32") if engine.backend == "onnxruntime" else \
            Path(ExportManifest.read(artifacts).checkpoint)
        for config in configs:
            write_generate_model(root, config, engine_file, artifacts / TOKENIZER_FILE)
        return
    for config in configs:
        version = root / config.name / "1"
        version.mkdir(parents=True)
        write_config(config, root / config.name / "config.pbtxt")
        if config.name == spec.name and config.backend == "python":  # the single topology
            _install_python_model(version, "pipeline")
            shutil.copy2(artifacts / TOKENIZER_FILE, version / TOKENIZER_FILE)
            _install_engine_file(spec, variant, version, plan)
            if plan is not None:
                _copy_engine_record(plan, root / config.name)
        elif config.name == spec.tokenizer_model:
            _install_python_model(version, "tokenizer")
            shutil.copy2(artifacts / TOKENIZER_FILE, version / TOKENIZER_FILE)
        elif config.name == spec.postprocess_model:
            _install_python_model(version, "postprocess")
            if spec.windows is not None:  # NER words, QA nothing; one copy keeps both models alike
                shutil.copy2(artifacts / TOKENIZER_FILE, version / TOKENIZER_FILE)
        elif config.name == spec.encoder_model:
            if engine.backend in ("onnxruntime", "torch"):
                _install_python_model(version, "onnx_encoder" if engine.backend == "onnxruntime" else "torch_encoder")
            _install_engine_file(spec, variant, version, plan)
            if engine.backend != "onnxruntime":
                _copy_engine_record(plan, root / config.name)


def write_generate_model(root: Path, config: mc.ModelConfig, engine_file: Path, tokenizer_file: Path) -> Path:
    """``<root>/<config.name>``: the ``generate`` model of ``config`` (stages/generate_config.py) over
    ``engine_file``, the ONNX export (engine onnxruntime) or the checkpoint folder (engine torch)."""
    params = GenerateParameters.from_parameters({k: v.string_value for k, v in config.parameters.items()})
    model_dir = Path(root) / config.name
    shutil.rmtree(model_dir, ignore_errors=True)
    version = model_dir / "1"
    version.mkdir(parents=True)
    write_config(config, model_dir / "config.pbtxt")
    _install_python_model(version, "generate")
    if params.engine == "onnxruntime":
        _link_or_copy(Path(engine_file), version / params.onnx_file)
    else:
        (version / params.checkpoint_dir).mkdir()
        for f in Path(engine_file).iterdir():
            if f.name == "config.json" or f.suffix in (".safetensors", ".bin"):
                shutil.copy2(f, version / params.checkpoint_dir / f.name)
    shutil.copy2(tokenizer_file, version / params.tokenizer_file)
    return model_dir


def _install_engine_file(spec: DeploymentSpec, variant: str, version: Path, plan: Path | None) -> None:
    """The engine the variant runs, into the version folder of the model that runs it."""
    engine = spec.engine(variant)
    if engine.backend == "onnxruntime":
        # the precision's graph (fp32: the export), served under the configured name
        _link_or_copy(precision_onnx_path(spec, engine.precision), version / ONNX_FILE)
        return
    what, filename = {"tensorrt": ("a TensorRT plan", PLAN_FILE), "torch": ("a TorchScript file", TORCHSCRIPT_FILE)}[
        engine.backend]
    fused = engine.backend == "torch" and engine.engine_format in FUSED_FORMATS
    if fused:  # two programs: masked, and full rows (no mask)
        what, filename = f"the fused encoder's two {engine.engine_format} programs", fused_engine_name(engine.engine_format)
    if plan is None or not plan.exists() or (fused and not full_rows_path(plan).exists()):
        raise RepositoryError(f"{spec.name}: variant {variant!r} needs {what}; run `make engines VARIANT={variant}`")
    _link_or_copy(plan, version / filename)
    if fused:
        _link_or_copy(full_rows_path(plan), full_rows_path(version / filename))
