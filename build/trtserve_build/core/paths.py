"""Where things live: the repository root, the artifact cache and every artifact's path.

One spelling for producers and consumers: a stage that writes an artifact and a stage (or the
repository generator) that reads it both ask here. Functions take anything with a ``name``
(a :class:`~trtserve_build.core.spec.DeploymentSpec`), so this module imports no spec.
"""
from __future__ import annotations

import os
from pathlib import Path

#: Repository root (this file lives in build/trtserve_build/core/).
REPO_ROOT = Path(__file__).resolve().parents[3]

#: Files of one export folder (``<cache>/engines/<name>/``).
ONNX_FILE = "model.onnx"
TOKENIZER_FILE = "tokenizer.json"
MANIFEST_FILE = "export.json"
#: Files inside a Triton model version folder.
PLAN_FILE = "model.plan"
TORCHSCRIPT_FILE = "model.pt"
#: engine_format "aoti": the masked package (the full-rows one: paths.full_rows_path)
AOTI_FILE = "model.pt2"
PYTHON_MODEL_FILE = "model.py"
#: The stamp a generated model repository carries.
REPOSITORY_STAMP_FILE = "trtserve_repository.json"
#: The stamp a trained checkpoint folder carries.
TRAINING_STAMP_FILE = "trtserve_training.json"


def cache_dir() -> Path:
    """Where generated artifacts (data, checkpoints, ONNX, plans) are cached."""
    return Path(os.environ.get("TRTSERVE_CACHE", REPO_ROOT / ".cache")).resolve()


def export_dir(spec) -> Path:
    """The export folder of a deployment: ONNX graphs, tokenizer, plans, records."""
    return cache_dir() / "engines" / spec.name


def precision_onnx_name(precision: str, export_file: str = ONNX_FILE) -> str:
    """File name of ``precision``'s graph in the export folder (fp32 is the export itself)."""
    return export_file if precision == "fp32" else f"{precision}.onnx"


def precision_onnx_path(spec, precision: str) -> Path:
    """Where ``precision``'s graph of ``spec`` lives (fp32: the export itself)."""
    return export_dir(spec) / precision_onnx_name(precision)


def transform_report_path(onnx_path: Path) -> Path:
    """``<precision>.json`` beside a transformed graph: what the transformation did, and its key."""
    return Path(onnx_path).with_suffix(".json")


def plan_path(spec, precision: str) -> Path:
    return export_dir(spec) / "plans" / f"{precision}.plan"


def torchscript_path(spec, precision: str, attention: str) -> Path:
    return export_dir(spec) / "torchscript" / f"{precision}-{attention}.pt"


def fused_engine_name(engine_format: str) -> str:
    """The served file of a fused-encoder engine: TorchScript, or an AOTInductor package."""
    return AOTI_FILE if engine_format == "aoti" else TORCHSCRIPT_FILE


def fused_path(spec, precision: str, engine_format: str) -> Path:
    """The masked program of a fused-encoder engine (stages/compiled.py; its full-rows twin lies beside it)."""
    return export_dir(spec) / engine_format / f"{precision}{Path(fused_engine_name(engine_format)).suffix}"


def full_rows_path(program: str | os.PathLike[str]) -> Path:
    """``<name>-full.<suffix>`` beside the masked program ``<name>.<suffix>``."""
    program = Path(program)
    return program.with_name(f"{program.stem}-full{program.suffix}")


def calibration_path(export_folder: Path, method: str) -> Path:
    return Path(export_folder) / f"calibration-{method}.json"


def fidelity_cache_path(spec, precision: str) -> Path:
    return export_dir(spec) / f"{precision}.fidelity.json"


def record_path(artifact: str | os.PathLike[str]) -> Path:
    """``<artifact>.json``: where a built artifact's (plan, TorchScript) record lives."""
    artifact = Path(artifact)
    return artifact.with_name(artifact.name + ".json")
