"""The steps every orchestration starts with: the checkpoint (trained when the spec says so)
exported and checked, and a precision's graph of that export. Both cached."""
from __future__ import annotations

from pathlib import Path

from ..core.paths import export_dir
from ..core.records import ExportManifest
from ..core.spec import DeploymentSpec
from ..data.tokenizer import spec_encoder
from ..stages import calibrate as calibrate_stage
from ..stages import export as export_stage
from ..stages import precision as precision_stage
from ..stages import train as train_stage


def export(spec: DeploymentSpec, *, force: bool = False) -> ExportManifest:
    """The checkpoint (fine-tuned first when the spec trains one), exported and checked (cached)."""
    checkpoint = train_stage.ensure_trained(spec)
    return export_stage.export(spec, checkpoint, force=force)


def precision_graph(spec: DeploymentSpec, precision: str, *, force: bool = False) -> Path:
    """``precision``'s graph of the (existing) export; int8 calibrates on the served tokenization."""
    def calibrate(model, source_sha: str):
        return calibrate_stage.calibrate_spec(spec, model, source_sha, export_dir(spec), spec_encoder(spec), force=force)

    return precision_stage.ensure_precision_onnx(spec, precision, calibrate=calibrate, force=force)
