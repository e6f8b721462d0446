"""Export stage: checkpoint -> ONNX (dynamic batch and sequence axes) + tokenizer.json.

The exported graph already holds the task head (logits, or mean pooling for embeddings),
so every engine backend serves exactly the same computation. After export, ONNX Runtime is
checked against PyTorch on real text; past tolerance the build fails with the numbers.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from trtserve_backend import contract

from .checkpoints import resolve_checkpoint
from .spec import DeploymentSpec, cache_dir
from .tasks import get_task

log = logging.getLogger(__name__)

ONNX_FILE = "model.onnx"
TOKENIZER_FILE = "tokenizer.json"
MANIFEST_FILE = "export.json"


class ExportError(RuntimeError):
    """Export failed; the message says why."""


class ToleranceError(ExportError):
    """ONNX Runtime disagrees with PyTorch beyond the spec's tolerance."""


@dataclass(frozen=True)
class ExportManifest:
    """What the export produced; later stages read this instead of re-deriving it."""

    name: str
    task: str
    fingerprint: str
    checkpoint: str
    inputs: tuple[str, ...]
    output: str
    hidden_size: int
    num_labels: int
    labels: tuple[str, ...]
    pad_token_id: int
    opset: int
    onnx_sha256: str
    max_abs_diff: float
    min_cosine: float
    checked_texts: int
    seconds: float

    @classmethod
    def read(cls, folder: Path) -> "ExportManifest":
        data = json.loads((folder / MANIFEST_FILE).read_text())
        data["inputs"] = tuple(data["inputs"])
        data["labels"] = tuple(data["labels"])
        return cls(**data)

    def write(self, folder: Path) -> None:
        (folder / MANIFEST_FILE).write_text(json.dumps(asdict(self), indent=2) + "\n")


def export_dir(spec: DeploymentSpec) -> Path:
    return cache_dir() / "engines" / spec.name


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def record_path(artifact: str | os.PathLike[str]) -> Path:
    """``<artifact>.json``: where a built artifact's (plan, TorchScript) record lives."""
    artifact = Path(artifact)
    return artifact.with_name(artifact.name + ".json")


def _checkpoint_fingerprint(folder: Path) -> str:
    """Cheap identity of a checkpoint folder: names, sizes and mtimes of its files."""
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            st = p.stat()
            h.update(f"{p.relative_to(folder)}:{st.st_size}:{int(st.st_mtime)}".encode())
    return h.hexdigest()[:16]


def export_fingerprint(spec: DeploymentSpec, checkpoint: Path) -> str:
    return hashlib.sha256(
        (spec.fingerprint("task", "model", "export") + _checkpoint_fingerprint(checkpoint)).encode()
    ).hexdigest()[:16]


# ---- the torch modules that get exported --------------------------------------------------

def _build_module(spec: DeploymentSpec, checkpoint: Path):
    """The PyTorch module whose forward(input_ids, attention_mask, token_type_ids) is exported."""
    import torch
    from transformers import AutoModel, AutoModelForSequenceClassification

    if spec.task == contract.CLASSIFICATION:
        model = AutoModelForSequenceClassification.from_pretrained(checkpoint, attn_implementation="eager")
        if model.config.num_labels != len(spec.model.labels):
            raise ExportError(
                f"{spec.name}: checkpoint {checkpoint} has {model.config.num_labels} labels, "
                f"the spec lists {len(spec.model.labels)}: {list(spec.model.labels)}"
            )

        class Classifier(torch.nn.Module):
            def __init__(self, inner):
                super().__init__()
                self.inner = inner

            def forward(self, input_ids, attention_mask, token_type_ids=None):
                return self.inner(
                    input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
                ).logits

        module = Classifier(model)
    elif spec.task == contract.EMBEDDING_TASK:
        model = AutoModel.from_pretrained(checkpoint, attn_implementation="eager", add_pooling_layer=False)

        class MeanPooler(torch.nn.Module):
            """Mean of the last hidden state over real (unmasked) tokens, as sentence-transformers."""

            def __init__(self, inner):
                super().__init__()
                self.inner = inner

            def forward(self, input_ids, attention_mask, token_type_ids=None):
                hidden = self.inner(
                    input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
                ).last_hidden_state
                mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
                return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)

        module = MeanPooler(model)
    else:  # the task registry and this function must agree
        raise ExportError(f"no exporter for task {spec.task!r}")
    return module.eval(), model.config


def _encode(tokenizer, texts: list[str], max_len: int, input_names: tuple[str, ...]) -> dict[str, np.ndarray]:
    enc = tokenizer(texts, padding=True, truncation=True, max_length=max_len, return_tensors="np")
    return {n: enc[n].astype(np.int64) for n in input_names}


def check_tolerance(reference: np.ndarray, candidate: np.ndarray, atol: float, min_cosine: float, what: str) -> tuple[float, float]:
    """Compare two [n, d] output arrays; raise ToleranceError with the numbers when off."""
    if reference.shape != candidate.shape:
        raise ToleranceError(f"{what}: shape {candidate.shape} != reference {reference.shape}")
    if not np.isfinite(candidate).all():
        bad = int((~np.isfinite(candidate)).any(axis=-1).sum())
        raise ToleranceError(f"{what}: {bad} of {len(candidate)} outputs contain NaN/Inf")
    diff = float(np.abs(reference.astype(np.float64) - candidate).max())
    ref = reference.astype(np.float64)
    cand = candidate.astype(np.float64)
    cos = (ref * cand).sum(-1) / (np.linalg.norm(ref, axis=-1) * np.linalg.norm(cand, axis=-1) + 1e-30)
    min_cos = float(cos.min())
    if diff > atol or min_cos < min_cosine:
        raise ToleranceError(
            f"{what}: max |diff| = {diff:.3g} (allowed {atol:g}), min cosine = {min_cos:.7f} "
            f"(required {min_cosine}) over {len(reference)} texts"
        )
    return diff, min_cos


def validation_texts(limit: int = 48) -> list[str]:
    """Real text for the ONNX-vs-PyTorch check: review snippets plus long and unusual ones."""
    from .data import corpus_texts

    texts = corpus_texts(limit=limit)
    long_text = " ".join(texts[:40])  # longer than any bucket: exercises truncation
    return texts + [long_text, "", "   ", "¡Qué película tan buena! 🎬🍿", "これは素晴らしい映画です。"]


def export(spec: DeploymentSpec, *, force: bool = False) -> ExportManifest:
    """Export ``spec``'s checkpoint to ONNX (cached) and check it against PyTorch."""
    import torch
    from transformers import AutoTokenizer

    from .train import ensure_trained

    checkpoint = ensure_trained(spec)
    out = export_dir(spec)
    fingerprint = export_fingerprint(spec, checkpoint)
    if not force and (out / MANIFEST_FILE).exists():
        manifest = ExportManifest.read(out)
        if manifest.fingerprint == fingerprint and (out / ONNX_FILE).exists():
            log.info("%s: ONNX export is current (%s)", spec.name, out / ONNX_FILE)
            return manifest

    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    if not getattr(tokenizer, "is_fast", False):
        raise ExportError(f"{checkpoint}: no fast (Rust) tokenizer available; the Triton tokenizer needs one")
    module, config = _build_module(spec, checkpoint)
    input_names = tuple(n for n in contract.ENCODER_INPUTS if n in tokenizer.model_input_names)
    if contract.INPUT_IDS not in input_names or contract.ATTENTION_MASK not in input_names:
        raise ExportError(f"{checkpoint}: tokenizer inputs {tokenizer.model_input_names} lack input_ids/attention_mask")
    task = get_task(spec.task)
    output = task.encoder_output(config.hidden_size, len(spec.model.labels)).name

    texts = validation_texts()
    sample = _encode(tokenizer, texts[:2], 16, input_names)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{spec.name}-", dir=out.parent))
    try:
        onnx_path = tmp / ONNX_FILE
        dynamic = {n: {0: "batch", 1: "sequence"} for n in input_names}
        dynamic[output] = {0: "batch"}
        with torch.no_grad():
            torch.onnx.export(
                module,
                tuple(torch.from_numpy(sample[n]) for n in input_names),
                str(onnx_path),
                input_names=list(input_names),
                output_names=[output],
                dynamic_axes=dynamic,
                opset_version=spec.export.opset,
                do_constant_folding=True,
                dynamo=False,
            )
        _check_onnx(onnx_path)
        diff, min_cos = _compare_with_pytorch(spec, module, tokenizer, onnx_path, texts, input_names)
        tokenizer.backend_tokenizer.save(str(tmp / TOKENIZER_FILE))
        manifest = ExportManifest(
            name=spec.name,
            task=spec.task,
            fingerprint=fingerprint,
            checkpoint=str(checkpoint),
            inputs=input_names,
            output=output,
            hidden_size=int(config.hidden_size),
            num_labels=len(spec.model.labels),
            labels=tuple(spec.model.labels),
            pad_token_id=int(tokenizer.pad_token_id),
            opset=spec.export.opset,
            onnx_sha256=sha256_file(onnx_path),
            max_abs_diff=diff,
            min_cosine=min_cos,
            checked_texts=len(texts),
            seconds=round(time.perf_counter() - started, 2),
        )
        manifest.write(tmp)
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("%s: exported %s (max |diff| %.2g, min cosine %.7f)", spec.name, out / ONNX_FILE, diff, min_cos)
    return manifest


def _check_onnx(path: Path) -> None:
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as e:  # noqa: BLE001 - re-raised typed
        raise ExportError(f"{path}: exported graph is not valid ONNX: {e}") from e


def _compare_with_pytorch(spec, module, tokenizer, onnx_path, texts, input_names) -> tuple[float, float]:
    import onnxruntime as ort
    import torch

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    feeds = _encode(tokenizer, texts, spec.model.max_sequence_length, input_names)
    with torch.no_grad():
        reference = module(*(torch.from_numpy(feeds[n]) for n in input_names)).numpy()
    candidate = session.run(None, feeds)[0]
    return check_tolerance(
        reference, candidate, spec.export.atol, spec.export.min_cosine, f"{spec.name}: ONNX Runtime vs PyTorch"
    )


def replace_dir(new: Path, target: Path) -> None:
    """Swap ``new`` into place at ``target`` (old contents removed)."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        target.rename(old)
    new.rename(target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
