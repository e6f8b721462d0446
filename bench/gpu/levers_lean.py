"""A lean BERT for bench/gpu/engine_levers.py: Hugging Face's BertForSequenceClassification (same
weights, same function) written as the kernels we want, for ``Lever(encoder="lean")``.

Why not the Hugging Face modules under ``torch.compile``: the session-5 run found that without a
mask the compiled HF model lost fused attention altogether (two FP32 batched GEMMs and a softmax
per layer: SDPA's math backend, upcast; 12.8k seq/s against 19.2k with the mask), while eager SDPA
without a mask runs cuDNN's fused kernel in 0.053 ms per layer against 0.123 ms with a mask. Here:

- one QKV projection ([3*768, 768], explicit rather than left to Inductor's freezing);
- attention as one opaque op (``trtserve_levers::self_attention``) on the packed QKV tensor: SDPA
  picks its backend at run time as in eager, whatever Inductor would trace; ``attention_op=False``
  calls SDPA in the traced code instead (the diagnosis: does Inductor keep the fused backend?);
- the mask: none (every row full length), HF's boolean [b, 1, s, s], or an additive fp16
  [b, 1, 1, s] key-padding bias (``mask_form``), built from the 2-D mask with no host sync;
- FFN up with bias + GELU in the cuBLASLt epilogue (``gelu="lt"``, levers_models.addmm_gelu) or a
  Linear + GELU for Inductor; FP8 GEMMs (rowwise, dynamic per token) for ``gemm="fp8_ffn"`` (FFN
  only) or ``"fp8_rowwise"`` (all four), through levers_models.Fp8Linear;
- residual add + LayerNorm as plain ops (Inductor fuses each pair into one kernel).

Position ids are 0..s-1 (BERT's absolute positions); dropout is off (eval), as in the reference.
"""
from __future__ import annotations

import torch

import levers_models as lm


@torch.library.custom_op("trtserve_levers::self_attention", mutates_args=())
def self_attention(qkv: torch.Tensor, mask: torch.Tensor | None, heads: int) -> torch.Tensor:
    """softmax(Q K^T / sqrt(d) + mask) V for a packed [b, s, 3*H] projection -> [b, s, H], contiguous."""
    return lm.attend(qkv, mask, heads).contiguous()


@self_attention.register_fake
def _(qkv, mask, heads):
    b, s, three_h = qkv.shape
    return qkv.new_empty((b, s, three_h // 3))


def _ln(module: torch.nn.LayerNorm, dtype) -> torch.nn.LayerNorm:
    ln = torch.nn.LayerNorm(module.normalized_shape, eps=module.eps, device=module.weight.device, dtype=dtype)
    with torch.no_grad():
        ln.weight.copy_(module.weight)
        ln.bias.copy_(module.bias)
    return ln


def _dense(linear: torch.nn.Linear, dtype, fp8: bool) -> torch.nn.Module:
    weight, bias = linear.weight.detach().to(dtype), linear.bias.detach().to(dtype)
    return lm.Fp8Linear(weight, bias, None) if fp8 else lm._linear(weight, bias)


class LeanLayer(torch.nn.Module):
    def __init__(self, layer, lever: lm.Lever):
        super().__init__()
        dtype = lever.torch_dtype
        sa = layer.attention.self
        self.heads = sa.num_attention_heads
        weight, bias = lm._qkv(sa)
        all_fp8, ffn_fp8 = lever.gemm == "fp8_rowwise", lever.gemm in ("fp8_rowwise", "fp8_ffn")
        self.qkv = (lm.Fp8Linear(weight.to(dtype), bias.to(dtype), None) if all_fp8
                    else lm._linear(weight.to(dtype), bias.to(dtype)))
        self.out = _dense(layer.attention.output.dense, dtype, all_fp8)
        self.ln1 = _ln(layer.attention.output.LayerNorm, dtype)
        if lever.gelu == "lt":
            self.up = lm.LtGeluIntermediate(_dense(layer.intermediate.dense, dtype, False))
        else:
            act = torch.nn.GELU(approximate="tanh" if lever.gelu == "tanh" else "none")
            self.up = torch.nn.Sequential(_dense(layer.intermediate.dense, dtype, ffn_fp8), act)
        self.down = _dense(layer.output.dense, dtype, ffn_fp8)
        self.ln2 = _ln(layer.output.LayerNorm, dtype)
        self.attention_op = lever.attention_op

    def forward(self, x, mask):  # x: [b, s, H]
        b, s, hidden = x.shape
        x2 = x.reshape(b * s, hidden)
        qkv = self.qkv(x2).view(b, s, 3 * hidden)
        ctx = self_attention(qkv, mask, self.heads) if self.attention_op else lm.attend(qkv, mask, self.heads)
        h = self.ln1(self.out(ctx.reshape(b * s, hidden)) + x2)
        y = self.ln2(self.down(self.up(h)) + h)
        return y.view(b, s, hidden)


class LeanBert(torch.nn.Module):
    """forward(input_ids, attention_mask, token_type_ids) -> FP32 logits, or the mean-pooled last
    hidden state (``pooled``): the call and outputs of levers_models.LeverModule."""

    def __init__(self, fp32_model, lever: lm.Lever, pooled: bool = False):
        super().__init__()
        if lever.encoder != "lean":
            raise ValueError(f"lever {lever.name}: encoder {lever.encoder!r}, this module is the lean one")
        dtype = lever.torch_dtype
        bert = fp32_model.bert
        emb = bert.embeddings
        self.word = torch.nn.Embedding.from_pretrained(emb.word_embeddings.weight.detach().to(dtype))
        self.position = torch.nn.Embedding.from_pretrained(emb.position_embeddings.weight.detach().to(dtype))
        self.token_type = torch.nn.Embedding.from_pretrained(emb.token_type_embeddings.weight.detach().to(dtype))
        self.ln = _ln(emb.LayerNorm, dtype)
        self.layers = torch.nn.ModuleList(LeanLayer(layer, lever) for layer in bert.encoder.layer)
        self.pooler = _dense(bert.pooler.dense, dtype, False)
        self.classifier = _dense(fp32_model.classifier, dtype, False)
        self.mask, self.mask_form, self.pooled, self.dtype = lever.mask, lever.mask_form, pooled, dtype

    def attention_mask(self, attention_mask):
        """What SDPA gets: None, boolean [b, 1, s, s] or an additive [b, 1, 1, s] bias (no host sync)."""
        if not self.mask:
            return None
        b, s = attention_mask.shape
        if self.mask_form == "bool4d":
            return attention_mask.bool()[:, None, None, :].expand(b, 1, s, s)
        keep = attention_mask[:, None, None, :].to(self.dtype)
        return (1.0 - keep) * torch.finfo(self.dtype).min

    def forward(self, input_ids, attention_mask, token_type_ids):
        s = input_ids.shape[1]
        positions = torch.arange(s, device=input_ids.device)
        x = self.ln(self.word(input_ids) + self.token_type(token_type_ids) + self.position(positions)[None])
        mask = self.attention_mask(attention_mask)
        for layer in self.layers:
            x = layer(x, mask)
        if self.pooled:
            hidden = x.float()
            m = attention_mask.unsqueeze(-1).to(hidden.dtype)
            return (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1e-9)
        return self.classifier(torch.tanh(self.pooler(x[:, 0]))).float()
