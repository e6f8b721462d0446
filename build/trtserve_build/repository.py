"""Repository stage: write a Triton model repository for one variant from specs + artifacts.

Layout (per deployment ``<name>``)::

    <repo>/<name>/config.pbtxt, 1/                      ensemble
    <repo>/<name>_tokenizer/config.pbtxt, 1/model.py, 1/tokenizer.json, 1/trtserve_backend/
    <repo>/<name>_encoder/config.pbtxt, 1/model.onnx + model.py (cpu) | 1/model.plan (gpu)
                                                        | 1/model.pt + model.py (gpu_torch)
    <repo>/<name>_postprocess/config.pbtxt, 1/model.py, 1/trtserve_backend/

or, in the single topology (the engine runs in Python: onnxruntime, torch), one model::

    <repo>/<name>/config.pbtxt, 1/model.py, 1/tokenizer.json, 1/model.onnx | 1/model.pt, 1/trtserve_backend/

Python models get a copy of the one ``trtserve_backend`` package, so the repository is
self-contained (the NGC container needs only ``tokenizers`` and ``onnxruntime`` installed).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Sequence

import trtserve_backend

from .export import ONNX_FILE, TOKENIZER_FILE, ExportManifest, export_dir, record_path, replace_dir
from .spec import DeploymentSpec
from .triton_config import PLAN_FILE, PYTHON_MODEL_FILE, TORCHSCRIPT_FILE, deployment_configs, write_config

STAMP_FILE = "trtserve_repository.json"
BACKEND_DIR = Path(trtserve_backend.__file__).parent
#: model role -> the Python model implementation copied to 1/model.py
PYTHON_MODELS = {
    "tokenizer": BACKEND_DIR / "triton_models" / "tokenizer.py",
    "onnx_encoder": BACKEND_DIR / "triton_models" / "onnx_encoder.py",
    "torch_encoder": BACKEND_DIR / "triton_models" / "torch_encoder.py",
    "postprocess": BACKEND_DIR / "triton_models" / "postprocess.py",
    "pipeline": BACKEND_DIR / "triton_models" / "pipeline.py",
}


class RepositoryError(RuntimeError):
    pass


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _install_python_model(version: Path, role: str) -> None:
    shutil.copy2(PYTHON_MODELS[role], version / PYTHON_MODEL_FILE)
    shutil.copytree(BACKEND_DIR, version / "trtserve_backend", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


def _backend_digest() -> str:
    h = hashlib.sha256()
    for p in sorted(BACKEND_DIR.rglob("*.py")):
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


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
    record = record_path(plan)
    if record.exists():
        data = json.loads(record.read_text())
        return data.get("plan_sha256") or data.get("sha256")  # TensorRT record | TorchScript record
    return f"{plan.stat().st_size}:{int(plan.stat().st_mtime)}"


def _copy_engine_record(engine_file: Path, model_dir: Path) -> None:
    """The engine's build record, beside (not inside) the version folder."""
    record = record_path(engine_file)
    if record.exists():
        shutil.copy2(record, model_dir / "engine_record.json")


def is_current(out_dir: Path, fingerprint: dict) -> bool:
    stamp = out_dir / STAMP_FILE
    return stamp.exists() and json.loads(stamp.read_text()) == fingerprint


def generate_repository(
    specs: Sequence[DeploymentSpec], variant: str, out_dir: Path, plans: dict[str, Path] | None = None
) -> Path:
    """Write the whole repository for ``variant`` into ``out_dir`` (replaced atomically)."""
    plans = plans or {}
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise RepositoryError(f"deployment names must be unique, got {names}")
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        for spec in specs:
            _write_deployment(spec, variant, tmp, plans.get(spec.name))
        (tmp / STAMP_FILE).write_text(json.dumps(repository_fingerprint(specs, variant, plans), indent=2) + "\n")
        replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def _write_deployment(spec: DeploymentSpec, variant: str, root: Path, plan: Path | None) -> None:
    artifacts = export_dir(spec)
    manifest = ExportManifest.read(artifacts)
    engine = spec.engine(variant)
    for config in deployment_configs(spec, manifest, variant):
        version = root / config.name / "1"
        version.mkdir(parents=True)
        write_config(config, root / config.name / "config.pbtxt")
        if config.name == spec.name and config.backend == "python":  # the single topology
            _install_python_model(version, "pipeline")
            shutil.copy2(artifacts / TOKENIZER_FILE, version / TOKENIZER_FILE)
            _install_engine_file(spec, variant, engine, version, plan)
            if plan is not None:
                _copy_engine_record(plan, root / config.name)
        elif config.name == spec.tokenizer_model:
            _install_python_model(version, "tokenizer")
            shutil.copy2(artifacts / TOKENIZER_FILE, version / TOKENIZER_FILE)
        elif config.name == spec.postprocess_model:
            _install_python_model(version, "postprocess")
        elif config.name == spec.encoder_model:
            if engine.backend == "onnxruntime":
                _install_python_model(version, "onnx_encoder")
            elif engine.backend == "torch":
                _install_python_model(version, "torch_encoder")
            _install_engine_file(spec, variant, engine, version, plan)
            if engine.backend != "onnxruntime":
                _copy_engine_record(plan, root / config.name)


def _install_engine_file(spec: DeploymentSpec, variant: str, engine, version: Path, plan: Path | None) -> None:
    """The engine the variant runs, into the version folder of the model that runs it."""
    if engine.backend == "onnxruntime":
        from .precision import precision_onnx_path

        # the precision's graph (fp32: the export), served under the configured name
        _link_or_copy(precision_onnx_path(spec, engine.precision), version / ONNX_FILE)
        return
    what, filename = {"tensorrt": ("a TensorRT plan", PLAN_FILE), "torch": ("a TorchScript file", TORCHSCRIPT_FILE)}[
        engine.backend]
    if plan is None or not plan.exists():
        raise RepositoryError(f"{spec.name}: variant {variant!r} needs {what}; run `make engines VARIANT={variant}`")
    _link_or_copy(plan, version / filename)
