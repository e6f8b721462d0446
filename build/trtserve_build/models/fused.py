"""The torch backend's fused BERT-family encoder: the same function as the Hugging Face model and
the task head (models/heads.py), written as the kernels a compiler should emit.

Why not the Hugging Face modules under a compiler: transformers builds a boolean [b, 1, s, s]
mask even when no row is padded, and Inductor then decomposes attention into batched GEMMs and a
softmax (measured on an H200: 13.6k seq/s against 22.2k; bench/gpu/NOTES.md, session 6). Here:

- one Q/K/V projection per layer ([3H, H]) and attention as one ``scaled_dot_product_attention``
  call on views of it (cuDNN's or flash's fused kernel on a GPU);
- the mask: ``full_rows=True`` gives SDPA no mask at all (the engine uses that program only for
  batches whose rows are all full length, which it knows on the host before the copy); otherwise
  an additive [b, 1, 1, s] key-padding bias built from the 2-D mask on the device (no host sync);
- the FFN's first GEMM with its bias and GELU in the cuBLASLt epilogue (``_addmm_activation``;
  on CUDA the tanh approximation of BERT's erf GELU, within the precision gates; on the CPU erf);
- residual add + LayerNorm: ``norm="kernel"`` calls ``trtserve::add_layer_norm``
  (trtserve_backend/kernels.py: one Triton pass on CUDA, add and normalise in FP32); ``norm="ops"``
  writes them as plain ops (the add in the engine's dtype, the LayerNorm in FP32 for ``hybrid``),
  which Inductor fuses itself (the AOTInductor format, which cannot call a Python-defined op);
  ``norm="epilogue"``: the GEMM before each in-layer LayerNorm adds the residual in its own
  epilogue (``residual.addmm_(x, W^T)``: beta = 1, written over the residual, which nothing reads
  after), and the operator adds the GEMM's bias as a row vector and normalises: one full-size
  read less per LayerNorm, the GEMM's extra read of the residual overlapped with its math.

Made into an engine by stages/compiled.py: traced to TorchScript (``engine_format = "fused"``) or
compiled ahead of time by AOTInductor (``"aoti"``); the module itself runs eagerly anywhere, which
is how the tests check it against the Hugging Face model on the CPU.
"""
from __future__ import annotations

import functools

import trtserve_contract as contract

from ..core.errors import TorchScriptError
from ..core.lazy import lazy_import

torch = lazy_import("torch")
F = lazy_import("torch.nn.functional")
kernels = lazy_import("trtserve_backend.kernels")

#: model types whose encoder this module reproduces (BERT's layer layout and absolute positions)
FUSED_MODEL_TYPES = ("bert",)
FUSED_TASKS = (contract.CLASSIFICATION, contract.EMBEDDING_TASK, contract.QUESTION_ANSWERING,
               contract.TOKEN_CLASSIFICATION)
FUSED_ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh")
#: how residual add + LayerNorm run: the engine's own operator (after the GEMM, or with the residual
#: added in the GEMM's epilogue), or plain ops (for Inductor)
NORM_MODES = ("kernel", "epilogue", "ops")


def unsupported(hf_model, task: str) -> str | None:
    """Why ``hf_model`` cannot be served by the fused encoder for ``task``, or None if it can."""
    config = hf_model.config
    if config.model_type not in FUSED_MODEL_TYPES:
        return f"model type {config.model_type!r} (fused encoder: {FUSED_MODEL_TYPES})"
    if task not in FUSED_TASKS:
        return f"task {task!r}"
    if getattr(config, "hidden_act", "gelu") not in FUSED_ACTIVATIONS:
        return f"activation {config.hidden_act!r}"
    if getattr(config, "position_embedding_type", "absolute") != "absolute":
        return f"position embeddings {config.position_embedding_type!r}"
    if getattr(config, "is_decoder", False):
        return "a decoder"
    return None


@functools.cache
def _classes():
    nn = torch.nn

    def frozen(tensor, dtype):
        return nn.Parameter(tensor.detach().to(dtype).clone(), requires_grad=False)

    class Dense(nn.Module):
        """``gelu``: "" (none), "epilogue" (bias + GELU inside the cuBLASLt GEMM) or "tanh"/"none"
        (F.gelu's approximation, a pointwise pass after the GEMM that Inductor fuses with the bias)."""

        def __init__(self, weight, bias, dtype, gelu: str = ""):
            super().__init__()
            self.weight, self.bias, self.gelu = frozen(weight, dtype), frozen(bias, dtype), gelu

        def forward(self, x):  # x: [n, in]
            if self.gelu == "epilogue":
                return torch._addmm_activation(self.bias, x, self.weight.t(), use_gelu=True)
            y = F.linear(x, self.weight, self.bias)
            return F.gelu(y, approximate=self.gelu) if self.gelu else y

    class Norm(nn.Module):
        """LayerNorm(x + residual) (``residual`` optional) with weights in ``compute_dtype``."""

        def __init__(self, ln, compute_dtype, kernel: bool = False):
            super().__init__()
            self.weight, self.bias = frozen(ln.weight, compute_dtype), frozen(ln.bias, compute_dtype)
            self.eps, self.compute_dtype, self.kernel = float(ln.eps), compute_dtype, kernel

        def forward(self, x, residual=None):
            if residual is not None and self.kernel:
                return kernels.add_layer_norm(x, residual, self.weight, self.bias, self.eps)
            if residual is not None:
                x = x + residual
            y = F.layer_norm(x.to(self.compute_dtype), self.weight.shape, self.weight, self.bias, self.eps)
            return y.to(x.dtype)

    def close(dense, norm, x, residual, epilogue: bool):
        """``LayerNorm(dense(x) + residual)``; ``epilogue``: the residual added by the GEMM itself."""
        if epilogue:
            summed = residual.addmm_(x, dense.weight.t())
            return kernels.add_layer_norm(summed, dense.bias, norm.weight, norm.bias, norm.eps)
        return norm(dense(x), residual)

    class Layer(nn.Module):
        def __init__(self, layer, dtype, ln_dtype, gelu: str, kernel: bool, epilogue: bool):
            super().__init__()
            sa = layer.attention.self
            self.heads = sa.num_attention_heads
            self.qkv = Dense(torch.cat([sa.query.weight, sa.key.weight, sa.value.weight]),
                             torch.cat([sa.query.bias, sa.key.bias, sa.value.bias]), dtype)
            out = layer.attention.output
            self.out = Dense(out.dense.weight, out.dense.bias, dtype)
            self.ln1 = Norm(out.LayerNorm, ln_dtype, kernel)
            up = layer.intermediate.dense
            self.up = Dense(up.weight, up.bias, dtype, gelu=gelu)
            down = layer.output
            self.down = Dense(down.dense.weight, down.dense.bias, dtype)
            self.ln2 = Norm(down.LayerNorm, ln_dtype, kernel)
            self.epilogue = epilogue

    class Encoder(nn.Module):
        """forward(*inputs in ``input_names`` order) -> the task output in FP32 (TaskModule's)."""

        def __init__(self, hf_model, task: str, input_names, dtype, ln_dtype, full_rows: bool, gelu: str,
                     norm: str):
            super().__init__()
            why = unsupported(hf_model, task)
            if why:
                raise TorchScriptError(f"the fused encoder does not cover {why}")
            bert = getattr(hf_model, "bert", hf_model)
            emb = bert.embeddings
            self.input_names, self.task, self.full_rows, self.dtype = tuple(input_names), task, full_rows, dtype
            self.word = frozen(emb.word_embeddings.weight, dtype)
            self.position = frozen(emb.position_embeddings.weight, dtype)
            self.token_type = frozen(emb.token_type_embeddings.weight, dtype)
            kernel = norm != "ops"
            self.ln = Norm(emb.LayerNorm, ln_dtype, kernel)
            self.layers = nn.ModuleList(Layer(layer, dtype, ln_dtype, gelu, kernel, norm == "epilogue")
                                        for layer in bert.encoder.layer)
            self.heads = bert.config.num_attention_heads
            self.head = None
            if task == contract.CLASSIFICATION:
                self.pooler = Dense(bert.pooler.dense.weight, bert.pooler.dense.bias, dtype)
                self.head = Dense(hf_model.classifier.weight, hf_model.classifier.bias, dtype)
            elif task == contract.QUESTION_ANSWERING:
                self.head = Dense(hf_model.qa_outputs.weight, hf_model.qa_outputs.bias, dtype)
            elif task == contract.TOKEN_CLASSIFICATION:
                self.head = Dense(hf_model.classifier.weight, hf_model.classifier.bias, dtype)

        def attention(self, qkv, bias, b: int, s: int):
            hidden = qkv.shape[-1] // 3
            q, k, v = qkv.view(b, s, 3, self.heads, hidden // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
            return out.transpose(1, 2).reshape(b * s, hidden)

        def forward(self, *inputs):
            feeds = dict(zip(self.input_names, inputs))
            ids, mask = feeds[contract.INPUT_IDS], feeds[contract.ATTENTION_MASK]
            b, s = ids.shape
            types = feeds.get(contract.TOKEN_TYPE_IDS)
            # positions 0..s-1 sliced from the table (no device constant), plus the token types
            extra = self.position[:s][None] + (F.embedding(types, self.token_type) if types is not None
                                               else self.token_type[0])
            x = self.ln(F.embedding(ids, self.word), extra.expand(b, s, -1)).reshape(b * s, -1)
            bias = None
            if not self.full_rows:
                keep = mask[:, None, None, :].to(self.dtype)
                bias = (1.0 - keep) * torch.finfo(self.dtype).min
            for layer in self.layers:
                h = close(layer.out, layer.ln1, self.attention(layer.qkv(x), bias, b, s), x, layer.epilogue)
                x = close(layer.down, layer.ln2, layer.up(h), h, layer.epilogue)
            hidden = x.view(b, s, -1)
            if self.task == contract.CLASSIFICATION:
                return self.head(torch.tanh(self.pooler(hidden[:, 0]))).float()
            if self.task in (contract.QUESTION_ANSWERING, contract.TOKEN_CLASSIFICATION):
                return self.head(x).view(b, s, -1).float()
            hidden = hidden.float()
            m = mask.unsqueeze(-1).to(hidden.dtype)
            return (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1e-9)

    return Encoder


def fused_encoder(hf_model, task: str, input_names, precision: str, *, full_rows: bool = False,
                  gelu: str = "epilogue", norm: str = "kernel"):
    """The fused module for ``hf_model`` (FP32, left unchanged) at ``precision`` (fp32/fp16/hybrid).
    ``gelu``: "epilogue" (cuBLASLt bias + GELU), "tanh" or "none" (exact erf GELU after the GEMM).
    ``norm``: one of :data:`NORM_MODES`."""
    if norm not in NORM_MODES:
        raise ValueError(f"norm {norm!r}; known: {NORM_MODES}")
    dtype = torch.float32 if precision == "fp32" else torch.float16
    ln_dtype = torch.float16 if precision == "fp16" else torch.float32
    return _classes()(hf_model, task, input_names, dtype, ln_dtype, full_rows, gelu, norm).eval()
