"""Export stage: checkpoint -> ONNX (dynamic batch and sequence axes) + tokenizer.json.

The exported graph already holds the task head (logits, or mean pooling for embeddings),
so every engine backend serves exactly the same computation. After export, ONNX Runtime is
checked against PyTorch on real text; past tolerance the build fails with the numbers.
"""
from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path

import numpy as np
import trtserve_contract as contract

from ..core.architectures import Architecture, UnknownArchitectureError, architecture_of
from ..core.errors import ExportError
from ..core.files import building, sha256_file
from ..core.lazy import lazy_import
from ..core.metrics import check_tolerance
from ..core.paths import MANIFEST_FILE, ONNX_FILE, TOKENIZER_FILE, export_dir
from ..core.records import ExportManifest
from ..core.spec import DeploymentSpec
from ..core.stamps import content_digest
from ..core.tasks import get_task
from ..data.texts import validation_texts
from ..models.heads import task_module
from ..models.loader import load_task_model

torch = lazy_import("torch")
transformers = lazy_import("transformers")
onnx = lazy_import("onnx")
ort = lazy_import("onnxruntime")

log = logging.getLogger(__name__)


def export_fingerprint(spec: DeploymentSpec, checkpoint: Path) -> str:
    """What the export is made from: the spec's task/model/export sections and the checkpoint's
    files by content (not modification times: a host venv and a container install of the same
    weights give the same fingerprint)."""
    return hashlib.sha256(
        (spec.fingerprint("task", "model", "export") + content_digest(checkpoint)).encode()
    ).hexdigest()[:16]


def is_current(spec: DeploymentSpec, fingerprint: str) -> ExportManifest | None:
    """The current export's manifest, or None when it must be (re)made."""
    out = export_dir(spec)
    if not (out / MANIFEST_FILE).exists() or not (out / ONNX_FILE).exists():
        return None
    manifest = ExportManifest.read(out)
    return manifest if manifest.fingerprint == fingerprint else None


def _encode(tokenizer, texts: list[str], max_len: int, input_names: tuple[str, ...]) -> dict[str, np.ndarray]:
    enc = tokenizer(texts, padding=True, truncation=True, max_length=max_len, return_tensors="np",
                    return_token_type_ids=contract.TOKEN_TYPE_IDS in input_names)
    return {n: enc[n].astype(np.int64) for n in input_names}


def export(spec: DeploymentSpec, checkpoint: Path, *, force: bool = False) -> ExportManifest:
    """Export the local ``checkpoint`` folder of ``spec`` to ONNX (cached) and check it against PyTorch."""
    checkpoint = Path(checkpoint)
    out = export_dir(spec)
    fingerprint = export_fingerprint(spec, checkpoint)
    current = None if force else is_current(spec, fingerprint)
    if current is not None:
        log.info("%s: ONNX export is current (%s)", spec.name, out / ONNX_FILE)
        return current

    started = time.perf_counter()
    arch = checkpoint_architecture(checkpoint, spec.name)
    tokenizer = transformers.AutoTokenizer.from_pretrained(checkpoint)
    if not getattr(tokenizer, "is_fast", False):
        raise ExportError(f"{checkpoint}: no fast (Rust) tokenizer available; the Triton tokenizer needs one")
    model = load_task_model(checkpoint, spec.task, labels=spec.model.labels)
    check_padding(arch, tokenizer, model.config, spec.name)
    input_names = arch.inputs  # the registry's, not the tokenizer's (DeBERTa-v3's lists unused token types)
    module, config = task_module(model, spec.task, input_names), model.config
    task = get_task(spec.task)
    output = task.encoder_output(config.hidden_size, len(spec.model.labels)).name

    texts = validation_texts()
    sample = _encode(tokenizer, texts[:2], 16, input_names)
    with building(out, prefix=f".{spec.name}-") as tmp:
        onnx_path = tmp / ONNX_FILE
        dynamic = {n: {0: "batch", 1: "sequence"} for n in input_names}
        dynamic[output] = {0: "batch", 1: "sequence"} if task.windowed else {0: "batch"}
        try:
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
        except Exception as e:  # noqa: BLE001 - re-raised typed, naming the architecture
            raise ExportError(f"{spec.name}: {arch.name} ({spec.task}) cannot be exported to ONNX: "
                              f"{type(e).__name__}: {e}") from e
        _check_onnx(onnx_path)
        _check_graph_inputs(onnx_path, input_names, arch.name)
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
            architecture=arch.name,
        )
        manifest.write(tmp)
    log.info("%s: exported %s (max |diff| %.2g, min cosine %.7f)", spec.name, out / ONNX_FILE, diff, min_cos)
    return manifest


def checkpoint_architecture(checkpoint: Path, where: str) -> Architecture:
    """The registered architecture of ``checkpoint`` (by its config's model_type)."""
    config = transformers.AutoConfig.from_pretrained(str(checkpoint))
    try:
        return architecture_of(config.model_type)
    except UnknownArchitectureError as e:
        raise ExportError(f"{where}: checkpoint {checkpoint}: {e}") from None


def check_padding(arch: Architecture, tokenizer, config, where: str) -> None:
    """Architectures that number positions from the padding index need the tokenizer to pad with
    that very id; the served tokenizer pads with the tokenizer's."""
    if arch.positions_from_padding and tokenizer.pad_token_id != config.pad_token_id:
        raise ExportError(
            f"{where}: {arch.name} computes position ids from the padding index, but the tokenizer pads "
            f"with id {tokenizer.pad_token_id} and the model's config.pad_token_id is {config.pad_token_id}: "
            f"the served outputs would be wrong; make them equal")


def _check_graph_inputs(path: Path, expected: tuple[str, ...], arch: str) -> None:
    graph_inputs = tuple(i.name for i in onnx.load(str(path), load_external_data=False).graph.input)
    if graph_inputs != expected:
        raise ExportError(f"{path}: the {arch} graph takes {list(graph_inputs)}, the architecture registry says "
                          f"{list(expected)} (an input the model ignores is dropped by the exporter: remove it there)")


def _check_onnx(path: Path) -> None:
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as e:  # noqa: BLE001 - re-raised typed
        raise ExportError(f"{path}: exported graph is not valid ONNX: {e}") from e


def _compare_with_pytorch(spec, module, tokenizer, onnx_path, texts, input_names) -> tuple[float, float]:
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    feeds = _encode(tokenizer, texts, spec.model.max_sequence_length, input_names)
    with torch.no_grad():
        reference = module(*(torch.from_numpy(feeds[n]) for n in input_names)).numpy()
    candidate = session.run(None, feeds)[0]
    agreement = check_tolerance(reference, candidate, f"{spec.name}: ONNX Runtime vs PyTorch",
                                min_cosine=spec.export.min_cosine, atol=spec.export.atol)
    return agreement.max_abs_diff, agreement.min_cosine
