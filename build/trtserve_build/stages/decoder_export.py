"""Decoder export stage: a GPT-2-architecture checkpoint -> ONNX with past key/values, one graph
for prompt and decode steps, checked against PyTorch.

Inputs ``input_ids`` [B, S], ``attention_mask`` [B, P+S], ``position_ids`` [B, S] and per layer
``past_key_values.<i>.key/value`` [B, H, P, D]; outputs ``logits`` [B, S, V] and
``present.<i>.key/value`` [B, H, P+S, D] (names from :mod:`trtserve_contract`). Exported with
``torch.onnx.export(dynamo=False)``, the model in eval mode with eager attention
(models/gpt2.py). After the export, the served executor (ONNX Runtime through
``trtserve_backend.generation``) is compared with PyTorch by the one tolerance check
(core/metrics.py) on a prompt step (P = 0) and on a decode step with a left-padded past; past
``[export]`` atol / min_cosine the build fails with the numbers. Cached by the spec's
task/model/export sections and the checkpoint's content, like the encoder export.
"""
from __future__ import annotations

import hashlib
import logging
import shutil
import time
from pathlib import Path

import numpy as np
import trtserve_contract as contract
from trtserve_backend.generation.ort_executor import OrtDecoderGraph

from ..core.errors import ExportError
from ..core.files import building, sha256_file
from ..core.lazy import lazy_import
from ..core.metrics import check_tolerance
from ..core.paths import MANIFEST_FILE, ONNX_FILE, TOKENIZER_FILE, export_dir
from ..core.records import ExportManifest
from ..core.spec import DeploymentSpec, ExportSpec
from ..core.stamps import content_digest
from ..models.gpt2 import decoder_module, geometry, io_names, load_decoder

torch = lazy_import("torch")

log = logging.getLogger(__name__)


def export_fingerprint(spec: DeploymentSpec, checkpoint: Path) -> str:
    """The spec's task/model/export sections and the checkpoint's weights and config by content."""
    weights = content_digest(checkpoint, "*.safetensors") + content_digest(checkpoint, "config.json")
    return hashlib.sha256((spec.fingerprint("task", "model", "export") + weights).encode()).hexdigest()[:16]


def export_decoder(spec: DeploymentSpec, checkpoint: Path, *, force: bool = False) -> ExportManifest:
    """``checkpoint`` exported into the spec's export folder (cached), with its tokenizer.json."""
    checkpoint, out = Path(checkpoint), export_dir(spec)
    fingerprint = export_fingerprint(spec, checkpoint)
    if not force and (out / MANIFEST_FILE).is_file() and (out / ONNX_FILE).is_file():
        manifest = ExportManifest.read(out)
        if manifest.fingerprint == fingerprint:
            log.info("%s: ONNX export is current (%s)", spec.name, out / ONNX_FILE)
            return manifest
    if not (checkpoint / TOKENIZER_FILE).is_file():
        raise ExportError(f"{checkpoint}: no {TOKENIZER_FILE} (the generate model's tokenizer)")
    started = time.perf_counter()
    with building(out, prefix=f".{spec.name}-") as tmp:
        onnx_path, model, errors = export_decoder_onnx(checkpoint, tmp, spec.export)
        if model.config.n_positions < spec.model.max_sequence_length:
            raise ExportError(f"{spec.name}: model.max_sequence_length {spec.model.max_sequence_length} exceeds the "
                              f"checkpoint's n_positions {model.config.n_positions}")
        shutil.copy2(checkpoint / TOKENIZER_FILE, tmp / TOKENIZER_FILE)
        inputs, _ = io_names(model.config.n_layer)
        manifest = ExportManifest(
            name=spec.name, task=spec.task, fingerprint=fingerprint, checkpoint=str(checkpoint),
            inputs=tuple(inputs), output=contract.LOGITS, hidden_size=int(model.config.n_embd), num_labels=0,
            labels=(), pad_token_id=int(model.config.eos_token_id), opset=spec.export.opset,
            onnx_sha256=sha256_file(onnx_path), max_abs_diff=max(e[0] for e in errors.values()),
            min_cosine=min(e[1] for e in errors.values()), checked_texts=len(errors),
            seconds=round(time.perf_counter() - started, 2), architecture=model.config.model_type,
            geometry=geometry(model.config))
        manifest.write(tmp)
    log.info("%s: exported %s (max |diff| %.2g)", spec.name, out / ONNX_FILE, manifest.max_abs_diff)
    return manifest


def export_decoder_onnx(checkpoint: Path, out_dir: Path, settings: ExportSpec = ExportSpec()):
    """``(onnx path, model, {check: (max |diff|, min cosine)})``: ``checkpoint`` exported to
    ``out_dir/model.onnx`` and checked against PyTorch (no cache, no manifest)."""
    model = load_decoder(checkpoint)
    cfg = model.config
    heads, head_dim = cfg.n_head, cfg.n_embd // cfg.n_head
    batch, seq, past_len = 2, 3, 4
    past = []
    for _ in range(cfg.n_layer):
        past += [torch.randn(batch, heads, past_len, head_dim), torch.randn(batch, heads, past_len, head_dim)]
    ids = torch.randint(0, cfg.vocab_size, (batch, seq))
    mask = torch.ones(batch, past_len + seq, dtype=torch.int64)
    positions = torch.arange(past_len, past_len + seq).repeat(batch, 1)
    inputs, outputs = io_names(cfg.n_layer)
    axes = {contract.INPUT_IDS: {0: "batch", 1: "sequence"}, contract.POSITION_IDS: {0: "batch", 1: "sequence"},
            contract.ATTENTION_MASK: {0: "batch", 1: "total_sequence"}, contract.LOGITS: {0: "batch", 1: "sequence"}}
    axes.update({name: {0: "batch", 2: "past_sequence"} for name in inputs[3:]})
    axes.update({name: {0: "batch", 2: "total_sequence"} for name in outputs[1:]})
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / ONNX_FILE
    try:
        with torch.no_grad():
            torch.onnx.export(decoder_module(model), (ids, mask, positions, *past), str(path), input_names=inputs,
                              output_names=outputs, dynamic_axes=axes, opset_version=settings.opset, dynamo=False)
    except Exception as e:  # noqa: BLE001 - re-raised typed
        raise ExportError(f"{checkpoint}: the GPT-2 decoder cannot be exported to ONNX: {type(e).__name__}: {e}") from e
    return path, model, check_against_pytorch(model, path, settings)


def check_against_pytorch(model, onnx_path: Path, settings: ExportSpec = ExportSpec(), seed: int = 0) -> dict:
    """ONNX Runtime vs PyTorch over logits and presents, on a prompt step and a padded decode step;
    :class:`~trtserve_build.core.errors.ToleranceError` past the bounds."""
    graph = OrtDecoderGraph(str(onnx_path))
    vocab = model.config.vocab_size
    rng = np.random.default_rng(seed)
    cases = {"prompt": (rng.integers(0, vocab, (1, 7)), 0, 0),  # P = 0
             "decode_padded": (rng.integers(0, vocab, (2, 1)), 6, 3)}  # two pasts, row 0 left-padded by 3
    errors = {}
    for case, (ids, past_len, pad) in cases.items():
        reference, got = _run_both(model, graph, ids, past_len, pad)
        worst = (0.0, 1.0)
        for name, r, g in zip(io_names(model.config.n_layer)[1], reference, got):
            a = check_tolerance(r, g, f"{onnx_path}: {case} step, {name}", min_cosine=settings.min_cosine,
                                atol=settings.atol)
            worst = (max(worst[0], a.max_abs_diff), min(worst[1], a.min_cosine))
        errors[case] = worst
    return errors


def _run_both(model, graph, ids: np.ndarray, past_len: int, pad: int):
    cfg = model.config
    batch, heads, head_dim = ids.shape[0], cfg.n_head, cfg.n_embd // cfg.n_head
    gen = torch.Generator().manual_seed(1)
    past = [(torch.randn(batch, heads, past_len, head_dim, generator=gen),
             torch.randn(batch, heads, past_len, head_dim, generator=gen)) for _ in range(cfg.n_layer)]
    mask = np.ones((batch, past_len + ids.shape[1]), np.int64)
    mask[0, :pad] = 0
    positions = mask[:, :past_len].sum(axis=1)[:, None] + np.arange(ids.shape[1])[None]
    with torch.no_grad():
        reference = decoder_module(model)(torch.as_tensor(ids), torch.as_tensor(mask), torch.as_tensor(positions),
                                          *[t for pair in past for t in pair])
    logits, present = graph.run(ids.astype(np.int64), mask, positions.astype(np.int64),
                                [(k.numpy(), v.numpy()) for k, v in past])
    return [r.numpy() for r in reference], [logits] + [t for pair in present for t in pair]
