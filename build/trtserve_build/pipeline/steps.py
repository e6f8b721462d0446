"""The steps every orchestration starts with: the checkpoint (trained, or given a seeded task
head, when the spec says so) exported and checked (a decoder with past key/values for
generation), and a precision's graph of that export. All cached."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from ..core.files import building
from ..core.lazy import lazy_import
from ..core.paths import export_dir
from ..core.records import ExportManifest
from ..core.spec import DeploymentSpec
from ..core.stamps import read_json
from ..data.checkpoints import resolve_checkpoint
from ..models.loader import seeded_task_model
from ..data.tokenizer import decoder_encoder, spec_encoder
from ..stages import calibrate as calibrate_stage
from ..stages import decoder_export as decoder_export_stage
from ..stages import decoder_train as decoder_train_stage
from ..stages import export as export_stage
from ..stages import precision as precision_stage
from ..stages import train as train_stage


transformers = lazy_import("transformers")
#: Beside a checkpoint made from ``[head]``: what it was made from.
HEAD_STAMP = "trtserve_head.json"


def ensure_seeded_head(spec: DeploymentSpec) -> Path:
    """``model.checkpoint``, made on first use from ``[head]``: the base encoder with a task head
    drawn from the seed (remade when the base, seed, task or labels change)."""
    target = Path(spec.checkpoint_path())
    made_from = {**dataclasses.asdict(spec.head), "task": spec.task, "labels": list(spec.model.labels)}
    if (target / "config.json").exists() and read_json(target / HEAD_STAMP) == made_from:
        return target
    base = resolve_checkpoint(spec.head.base_checkpoint)
    with building(target, prefix=f".{target.name}-") as tmp:
        seeded_task_model(base, spec.task, spec.model.labels, spec.head.seed).save_pretrained(tmp)
        transformers.AutoTokenizer.from_pretrained(str(base)).save_pretrained(tmp)
        (tmp / HEAD_STAMP).write_text(json.dumps(made_from, indent=2) + "\n")
    return target


def export(spec: DeploymentSpec, *, force: bool = False) -> ExportManifest:
    """The checkpoint (fine-tuned first when the spec trains one, or given its seeded head;
    a generation spec's trained from scratch), exported and checked (cached)."""
    if spec.generation is not None:
        checkpoint = (decoder_train_stage.ensure_decoder_trained(spec) if spec.training is not None
                      else resolve_checkpoint(spec.model.checkpoint))
        return decoder_export_stage.export_decoder(spec, checkpoint, force=force)
    checkpoint = ensure_seeded_head(spec) if spec.head is not None else train_stage.ensure_trained(spec)
    return export_stage.export(spec, checkpoint, force=force)


def precision_graph(spec: DeploymentSpec, precision: str, *, force: bool = False) -> Path:
    """``precision``'s graph of the (existing) export; int8 calibrates on the served tokenization."""
    def calibrate(model, source_sha: str):
        encode = decoder_encoder(spec) if spec.generation is not None else spec_encoder(spec)
        return calibrate_stage.calibrate_spec(spec, model, source_sha, export_dir(spec), encode, force=force)

    return precision_stage.ensure_precision_onnx(spec, precision, calibrate=calibrate, force=force)
