"""GPT-2 to ONNX with past key/values, one graph for prompt and decode steps, checked against PyTorch.

Inputs ``input_ids`` [B, S], ``attention_mask`` [B, P+S], ``position_ids`` [B, S] and per layer
``past_key_values.<i>.key/value`` [B, H, P, D]; outputs ``logits`` [B, S, V] and
``present.<i>.key/value`` [B, H, P+S, D] (names from :mod:`trtserve_backend.contract`). Exported
with ``torch.onnx.export(dynamo=False)``, opset 17, the model in ``.eval()`` and eager attention
(one plain MatMul/Softmax path that every runtime and the precision stage understand). After the
export, ONNX Runtime is compared with PyTorch on a prompt step, on a decode step with a
left-padded past and on P = 0; past the tolerance the export fails with the numbers.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

import trtserve_contract as contract

OPSET = 17
ONNX_FILE = "model.onnx"
ATOL = 1e-4


class ExportToleranceError(RuntimeError):
    """ONNX Runtime and PyTorch disagree past the tolerance; the message has the numbers."""


def load_model(checkpoint: Path):
    from transformers import GPT2LMHeadModel

    return GPT2LMHeadModel.from_pretrained(str(checkpoint), attn_implementation="eager").eval()


def _wrapper(model):
    import torch
    from transformers import DynamicCache

    layers = model.config.n_layer

    class DecoderWithPast(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, position_ids, *past):
            cache = DynamicCache()
            for i in range(layers):
                cache.update(past[2 * i], past[2 * i + 1], i)
            out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                             past_key_values=cache, use_cache=True, return_dict=True)
            presents = []
            for i in range(layers):
                layer = out.past_key_values.layers[i]
                presents += [layer.keys, layer.values]
            return (out.logits, *presents)

    return DecoderWithPast().eval()


def io_names(layers: int) -> tuple[list[str], list[str]]:
    inputs = list(contract.DECODER_INPUTS)
    outputs = [contract.LOGITS]
    for i in range(layers):
        inputs += [contract.past_key_name(i), contract.past_value_name(i)]
        outputs += [contract.present_key_name(i), contract.present_value_name(i)]
    return inputs, outputs


def export_decoder(checkpoint: Path, out_dir: Path) -> Path:
    """Export ``checkpoint`` to ``out_dir/model.onnx`` (+ export_record.json); returns the ONNX path."""
    import torch

    model = load_model(checkpoint)
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
    for name in inputs[3:]:
        axes[name] = {0: "batch", 2: "past_sequence"}
    for name in outputs[1:]:
        axes[name] = {0: "batch", 2: "total_sequence"}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / ONNX_FILE
    tmp = out_dir / f".{ONNX_FILE}.tmp-{os.getpid()}"
    with torch.no_grad():
        torch.onnx.export(_wrapper(model), (ids, mask, positions, *past), str(tmp), input_names=inputs,
                          output_names=outputs, dynamic_axes=axes, opset_version=OPSET, dynamo=False)
    os.replace(tmp, path)
    errors = check_against_pytorch(model, path)
    (out_dir / "export_record.json").write_text(json.dumps({
        "checkpoint": str(checkpoint), "opset": OPSET, "layers": cfg.n_layer, "heads": heads, "head_dim": head_dim,
        "context_length": cfg.n_positions, "max_abs_error": errors, "atol": ATOL}, indent=2) + "\n")
    return path


def check_against_pytorch(model, onnx_path: Path, seed: int = 0) -> dict[str, float]:
    """Max |ONNX Runtime - PyTorch| over logits and presents, prompt and padded decode; raise past ATOL."""
    from trtserve_backend.generation.ort_executor import OrtDecoderGraph

    graph = OrtDecoderGraph(str(onnx_path))
    cfg = model.config
    rng = np.random.default_rng(seed)
    errors = {}
    # 1) a prompt step, P = 0
    ids = rng.integers(0, cfg.vocab_size, (1, 7))
    errors["prompt"] = _compare(model, graph, ids, np.ones_like(ids), np.arange(7)[None], past_len=0, pad=0)
    # 2) a decode step of two rows whose pasts differ in length (row 0 left-padded by 3)
    errors["decode_padded"] = _compare(model, graph, rng.integers(0, cfg.vocab_size, (2, 1)), None, None,
                                       past_len=6, pad=3)
    worst = max(errors.values())
    if not worst <= ATOL:
        raise ExportToleranceError(f"{onnx_path}: ONNX Runtime differs from PyTorch by {errors} (atol {ATOL})")
    return errors


def _compare(model, graph, ids, mask, positions, past_len: int, pad: int) -> float:
    import torch

    cfg = model.config
    batch = ids.shape[0]
    heads, head_dim = cfg.n_head, cfg.n_embd // cfg.n_head
    gen = torch.Generator().manual_seed(1)
    past = [(torch.randn(batch, heads, past_len, head_dim, generator=gen),
             torch.randn(batch, heads, past_len, head_dim, generator=gen)) for _ in range(cfg.n_layer)]
    if mask is None:
        mask = np.ones((batch, past_len + ids.shape[1]), np.int64)
        mask[0, :pad] = 0
        lengths = mask[:, :past_len].sum(axis=1)
        positions = lengths[:, None] + np.arange(ids.shape[1])[None]
    wrapper = _wrapper(model)
    with torch.no_grad():
        ref = wrapper(torch.as_tensor(ids), torch.as_tensor(mask), torch.as_tensor(positions),
                      *[t for pair in past for t in pair])
    logits, present = graph.run(ids.astype(np.int64), mask.astype(np.int64), positions.astype(np.int64),
                                [(k.numpy(), v.numpy()) for k, v in past])
    got = [logits] + [t for pair in present for t in pair]
    worst = 0.0
    for r, g in zip(ref, got):
        worst = max(worst, float(np.abs(r.numpy() - g).max()))
    return worst
