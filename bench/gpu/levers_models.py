"""BERT-base engine candidates for issue 13 (bench/gpu/engine_levers.py): one lever each, as data.

A :class:`Lever` names what changes against the served baseline (Hugging Face BERT in fp16 with
SDPA attention, ``torch.compile`` + Inductor freezing, replayed in our own CUDA graph):

``mask``       False: the model gets no attention mask (every row full length), so SDPA may
               pick the flash kernel; a served engine would use it only for batches whose mask
               is all ones (known on the host before the copy, no device sync).
``gelu``       ``erf`` (BERT's exact GELU, Inductor fuses it after the GEMM), ``tanh`` (the
               approximation, still a separate pointwise pass) or ``lt`` (bias + GELU in the
               cuBLASLt epilogue through ``torch._addmm_activation``: on CUDA that is the tanh
               approximation; Inductor would decompose the op, so it runs as an opaque custom op).
``gemm``       ``fp16`` or ``fp8``: e4m3 GEMMs (``torch._scaled_mm``) with per-tensor scales, the
               activation scales calibrated once on random tokens (static, so the quantizing
               multiply + cast is a pointwise op Inductor fuses into the LayerNorm/GELU before it).
               ``fp8_rowwise`` (all four GEMMs) / ``fp8_ffn`` (the two FFN GEMMs only): rowwise
               scales, per output channel for the weight, per token and computed at run time for
               the activation (no calibration; lean encoder only). Not the issue's fp16 precision:
               reported, flagged.
``encoder``    ``hf`` (the Hugging Face modules, patched) or ``lean`` (levers_lean.py: the same
               function written as the kernels wanted: one QKV GEMM, attention as one opaque op,
               the residual adds and LayerNorms as plain ops for Inductor to fuse);
               ``mask_form`` (lean, with a mask): ``bool4d`` (SDPA gets a boolean [b, 1, s, s]
               mask, as Hugging Face builds it) or ``kpad_add`` (an additive fp16 [b, 1, 1, s]
               key-padding bias); ``attention_op`` (lean): False lets Inductor trace SDPA itself.
``fused_qkv``  one [3*768, 768] projection instead of three (Inductor's freezing already
               concatenates fp16 Q/K/V; FP8 needs it done by hand).
``attention``  the SDPA backend (None = PyTorch's choice; flash / efficient / cudnn / math).
``dtype``      fp16 or bf16.
``compile``    None (eager, captured in a CUDA graph), ``default`` or ``max-autotune-no-cudagraphs``,
               or ``aoti`` (torch.export + AOTInductor package, loaded back: what a served engine
               could load at start instead of compiling); ``inductor``: Inductor config overrides
               (freezing is on for every compiled lever).

Everything here runs on the CPU too (fp8 GEMMs are emulated there), which is how the unit tests
check every lever against FP32 on a tiny BERT before a GPU run.
"""
from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

FP8_MAX = 448.0  # largest finite float8_e4m3fn


@dataclass(frozen=True)
class Lever:
    name: str
    what: str
    dtype: str = "fp16"
    mask: bool = True
    gelu: str = "erf"
    gemm: str = "fp16"
    fused_qkv: bool = False
    attention: str | None = None
    compile: str | None = "default"
    inductor: dict = field(default_factory=dict)
    cap_s: float = 75.0  # per (lever, shape): compile + check + capture + timing
    precision_note: str = ""
    encoder: str = "hf"
    mask_form: str = "bool4d"
    attention_op: bool = True

    def __post_init__(self):
        checks = {"dtype": ("fp16", "bf16"), "gelu": ("erf", "tanh", "lt"),
                  "gemm": ("fp16", "fp8", "fp8_rowwise", "fp8_ffn"),
                  "attention": (None, "flash", "efficient", "cudnn", "math"),
                  "compile": (None, "default", "max-autotune-no-cudagraphs", "aoti"),
                  "encoder": ("hf", "lean"), "mask_form": ("bool4d", "kpad_add")}
        for attr, allowed in checks.items():
            if getattr(self, attr) not in allowed:
                raise ValueError(f"lever {self.name}: {attr}={getattr(self, attr)!r}, allowed {allowed}")
        if self.gemm != "fp16" and self.gelu == "lt":
            raise ValueError(f"lever {self.name}: the cuBLASLt GELU epilogue is for fp16/bf16 GEMMs")
        if (self.gemm in ("fp8_rowwise", "fp8_ffn")) != (self.gemm != "fp16" and self.encoder == "lean"):
            raise ValueError(f"lever {self.name}: gemm {self.gemm} with encoder {self.encoder} (rowwise FP8 is "
                             "the lean encoder's, per-tensor FP8 the Hugging Face one's)")

    @property
    def fp8(self) -> bool:
        return self.gemm != "fp16"

    @property
    def torch_dtype(self):
        return torch.float16 if self.dtype == "fp16" else torch.bfloat16


BASELINE = "baseline"
#: The candidates, in run order (baseline first; the long autotune last).
LEVERS: list[Lever] = [
    Lever(BASELINE, "served best so far: HF fp16 SDPA + mask, torch.compile + freezing, own CUDA graph"),
    Lever("lean_nomask_lt", "lean encoder: one QKV GEMM, attention op (no mask: cuDNN/flash), Lt bias+GELU "
          "epilogue, add+LayerNorm fused by Inductor", encoder="lean", mask=False, gelu="lt"),
    Lever("lean_kpad_lt", "lean encoder, additive [b,1,1,s] key-padding mask, Lt GELU", encoder="lean",
          gelu="lt", mask_form="kpad_add"),
    Lever("lean_mask_lt", "lean encoder, boolean [b,1,s,s] mask (as HF builds it), Lt GELU", encoder="lean",
          gelu="lt"),
    Lever("lean_nomask_fp8ffn", "lean encoder, no mask, FFN GEMMs in FP8 e4m3 with rowwise scales (dynamic "
          "per token, per channel weight), exact GELU", encoder="lean", mask=False, gemm="fp8_ffn",
          precision_note="fp8 FFN GEMMs: not the fp16 target's precision"),
    Lever("lean_nomask_erf", "lean encoder, no mask, exact (erf) GELU as an Inductor pointwise op",
          encoder="lean", mask=False),
    Lever("lean_nomask_lt_sdpa", "lean_nomask_lt with SDPA traced by Inductor (no opaque attention op): "
          "does Inductor keep the fused backend?", encoder="lean", mask=False, gelu="lt", attention_op=False),
    Lever("lean_nomask_fp8", "lean encoder, no mask, all four GEMMs FP8 e4m3 rowwise (dynamic per token)",
          encoder="lean", mask=False, gemm="fp8_rowwise", precision_note="fp8 GEMMs: not the fp16 target's precision"),
    Lever("eager_lean_nomask_lt", "lean_nomask_lt without torch.compile, CUDA graph (TorchScript-able: "
          "the served engine's kind)", encoder="lean", mask=False, gelu="lt", compile=None),
    Lever("nomask", "no attention mask (full-length rows): SDPA free to use flash", mask=False),
    Lever("lt_gelu", "bias+GELU in the cuBLASLt epilogue (tanh GELU), mask", gelu="lt"),
    Lever("nomask_lt_gelu", "no mask + cuBLASLt bias+GELU epilogue (tanh GELU)", mask=False, gelu="lt"),
    Lever("nomask_lt_gelu_cdt", "no mask + Lt GELU + coordinate_descent_tuning", mask=False, gelu="lt",
          inductor={"coordinate_descent_tuning": True}),
    Lever("tanh_gelu", "tanh GELU as an Inductor pointwise op (fidelity of the approximation alone)",
          gelu="tanh"),
    Lever("mask_cudnn", "mask, SDPA forced to the cuDNN attention backend", attention="cudnn"),
    Lever("nomask_cudnn", "no mask, SDPA forced to the cuDNN attention backend", mask=False, attention="cudnn"),
    Lever("bf16_nomask_lt_gelu", "bf16 instead of fp16, no mask + Lt GELU", dtype="bf16", mask=False, gelu="lt"),
    Lever("fp8_nomask", "FP8 e4m3 GEMMs (static per-tensor scales), fused QKV, no mask, exact GELU",
          gemm="fp8", fused_qkv=True, mask=False, precision_note="fp8 GEMMs: not the fp16 target's precision"),
    Lever("fp8_mask", "FP8 e4m3 GEMMs (static per-tensor scales), fused QKV, mask, exact GELU",
          gemm="fp8", fused_qkv=True, precision_note="fp8 GEMMs: not the fp16 target's precision"),
    Lever("eager_mask", "no torch.compile: eager HF fp16 SDPA + mask in a CUDA graph (the TorchScript engine's "
          "kernels, for reference)", compile=None),
    Lever("eager_lt_gelu", "no torch.compile: eager fp16, fused QKV, Lt GELU, mask, CUDA graph (servable as "
          "TorchScript)", compile=None, gelu="lt", fused_qkv=True),
    Lever("eager_nomask_lt_gelu", "no torch.compile: eager fp16, no mask, Lt GELU, CUDA graph (servable "
          "as TorchScript)", compile=None, mask=False, gelu="lt", fused_qkv=True),
    Lever("aoti_baseline", "the baseline ahead of time: torch.export + AOTInductor package (freezing), loaded "
          "back and captured (package build and load seconds recorded)", compile="aoti", cap_s=150.0),
    Lever("autotune_triton_nomask", "max-autotune-no-cudagraphs, Triton GEMM templates (GELU fused in the "
          "GEMM epilogue, exact erf), no mask", compile="max-autotune-no-cudagraphs", mask=False,
          inductor={"max_autotune_gemm_backends": "TRITON", "epilogue_fusion": True}, cap_s=170.0),
]
LEVERS_BY_NAME = {lever.name: lever for lever in LEVERS}


# ---- the cuBLASLt bias + GELU epilogue as an opaque op --------------------------------------

@torch.library.custom_op("trtserve_levers::addmm_gelu", mutates_args=())
def addmm_gelu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """GELU(x @ weight.T + bias) in one cuBLASLt call on CUDA (tanh GELU); erf GELU on the CPU."""
    return torch._addmm_activation(bias, x, weight.t(), use_gelu=True)


@addmm_gelu.register_fake
def _(x, weight, bias):
    return x.new_empty((x.shape[0], weight.shape[0]))


class LtGeluIntermediate(torch.nn.Module):
    """BertIntermediate (dense + GELU) as one GEMM with the bias and GELU in its epilogue."""

    def __init__(self, dense: torch.nn.Linear):
        super().__init__()
        self.weight = torch.nn.Parameter(dense.weight.detach().clone(), requires_grad=False)
        self.bias = torch.nn.Parameter(dense.bias.detach().clone(), requires_grad=False)

    def forward(self, hidden_states):
        shape = hidden_states.shape
        out = addmm_gelu(hidden_states.reshape(-1, shape[-1]), self.weight, self.bias)
        return out.view(*shape[:-1], out.shape[-1])


class TanhGelu(torch.nn.Module):
    def forward(self, x):
        return F.gelu(x, approximate="tanh")


# ---- FP8 GEMMs --------------------------------------------------------------------------------

class Fp8Linear(torch.nn.Module):
    """y = x @ W.T + b with x and W in float8_e4m3fn, output in x's dtype.

    Per-tensor (``in_amax`` given): the largest |x| seen in calibration is the static activation
    scale (quantizing is one multiply, clamp and cast), one scale for the weight. Rowwise
    (``in_amax=None``): one scale per weight row (output channel) and one per token, computed from
    the token's own largest |x| at run time (a row reduction Inductor fuses into the kernel that
    produces x). On CUDA one ``torch._scaled_mm``; elsewhere the same quantized values multiplied
    in FP32 (the CPU tests' emulation).
    """

    def __init__(self, weight, bias, in_amax: float | None):
        super().__init__()
        self.rowwise = in_amax is None
        w = weight.detach().float()
        w_amax = w.abs().amax(dim=1, keepdim=True) if self.rowwise else w.abs().max()
        w_scale = w_amax.clamp(min=1e-12) / FP8_MAX
        # [in, out] column-major (the transposed view of the [out, in] quantized weight), the layout
        # _scaled_mm wants for its second operand: a buffer as is, nothing for freezing to fold.
        self.register_buffer("wq_t", (w / w_scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn).t())
        # rowwise: [1, out] contiguous, as _scaled_mm wants scale_b
        self.register_buffer("w_scale", w_scale.t().contiguous() if self.rowwise else w_scale.reshape(()))
        if not self.rowwise:
            x_scale = max(float(in_amax), 1e-6) / FP8_MAX
            self.register_buffer("x_scale", torch.tensor(x_scale, dtype=torch.float32))
            self.register_buffer("x_inv", torch.tensor(1.0 / x_scale, dtype=torch.float32))
        self.register_buffer("bias", bias.detach().clone())

    def forward(self, x):
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        if self.rowwise:  # [tokens, 1] fp32, contiguous
            x_scale = x2.abs().amax(dim=1, keepdim=True).float().clamp(min=1e-12) / FP8_MAX
            xq = (x2.float() / x_scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
        else:
            x_scale = self.x_scale
            xq = (x2.float() * self.x_inv).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
        if x.device.type == "cpu":
            y = ((xq.float() * x_scale) @ (self.wq_t.float() * self.w_scale) + self.bias.float()).to(x.dtype)
        else:  # CUDA (and "meta", whose checks of the arguments the unit tests run)
            y = torch._scaled_mm(xq, self.wq_t, scale_a=x_scale, scale_b=self.w_scale,
                                 bias=self.bias.to(x.dtype), out_dtype=x.dtype)
        return y.view(*shape[:-1], y.shape[-1])


# ---- attention with one fused QKV projection ---------------------------------------------------

def attend(qkv: torch.Tensor, mask: torch.Tensor | None, heads: int) -> torch.Tensor:
    """Attention from a packed [b, s, 3*H] projection: [b, heads, s, d] views of it into SDPA
    (scale 1/sqrt(d), BERT's) -> [b, s, H]."""
    b, s, three_h = qkv.shape
    hidden = three_h // 3
    q, k, v = qkv.view(b, s, 3, heads, hidden // heads).permute(2, 0, 3, 1, 4).unbind(0)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # looked up at call time: the tests' spy sees it
    return out.transpose(1, 2).reshape(b, s, hidden)


class FusedSelfAttention(torch.nn.Module):
    """BertSelfAttention (SDPA) with Q, K and V from one projection; same call and outputs."""

    def __init__(self, sa, projection: torch.nn.Module):
        super().__init__()
        self.qkv = projection
        self.heads = sa.num_attention_heads

    def forward(self, hidden_states, attention_mask=None, **kwargs):
        return attend(self.qkv(hidden_states), attention_mask, self.heads), None


def _qkv(sa):
    weight = torch.cat([sa.query.weight, sa.key.weight, sa.value.weight]).detach()
    bias = torch.cat([sa.query.bias, sa.key.bias, sa.value.bias]).detach()
    return weight, bias


def _linear(weight, bias) -> torch.nn.Linear:
    lin = torch.nn.Linear(weight.shape[1], weight.shape[0], device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        lin.weight.copy_(weight)
        lin.bias.copy_(bias)
    return lin


# ---- calibration and building ---------------------------------------------------------------

def calibrate(fp32_model, feeds: dict) -> dict[str, float]:
    """Largest |input| of every encoder Linear on ``feeds`` (the FP32 model, eager), by module name."""
    amax: dict[str, float] = {}
    hooks = []
    for name, module in fp32_model.named_modules():
        if isinstance(module, torch.nn.Linear) and ".encoder.layer." in f".{name}":
            def hook(mod, args, _out, name=name):
                amax[name] = max(amax.get(name, 0.0), float(args[0].detach().abs().max()))
            hooks.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            fp32_model(**feeds)
    finally:
        for h in hooks:
            h.remove()
    return amax


def _layers(model):
    encoder = model.bert.encoder if hasattr(model, "bert") else model.encoder
    prefix = "bert.encoder.layer" if hasattr(model, "bert") else "encoder.layer"
    return [(f"{prefix}.{i}", layer) for i, layer in enumerate(encoder.layer)]


def convert(fp32_model, lever: Lever, amax: dict[str, float] | None = None):
    """A deep copy of the FP32 Hugging Face BERT model with ``lever`` applied (eval, lever's dtype)."""
    if lever.gemm == "fp8" and not amax:
        raise ValueError(f"lever {lever.name}: FP8 GEMMs need calibration (amax)")
    model = copy.deepcopy(fp32_model).eval()
    model.config._attn_implementation = "sdpa"
    model.to(lever.torch_dtype)
    for prefix, layer in _layers(model):
        if lever.fused_qkv or lever.gemm == "fp8":
            weight, bias = _qkv(layer.attention.self)
            proj = (Fp8Linear(weight, bias, amax[f"{prefix}.attention.self.query"]) if lever.gemm == "fp8"
                    else _linear(weight, bias))
            layer.attention.self = FusedSelfAttention(layer.attention.self, proj)
        if lever.gemm == "fp8":
            for sub, name in ((layer.attention.output, "attention.output.dense"),
                              (layer.intermediate, "intermediate.dense"), (layer.output, "output.dense")):
                sub.dense = Fp8Linear(sub.dense.weight, sub.dense.bias, amax[f"{prefix}.{name}"])
        if lever.gelu == "lt":
            layer.intermediate = LtGeluIntermediate(layer.intermediate.dense)
        elif lever.gelu == "tanh":
            layer.intermediate.intermediate_act_fn = TanhGelu()
    return model


class LeverModule(torch.nn.Module):
    """forward(input_ids, attention_mask, token_type_ids) -> FP32 logits (classification) or the
    mean-pooled last hidden state (``pooled=True``); without ``mask`` the mask is not passed to
    the model (the caller guarantees full-length rows; pooling still uses it). ``mask4d``: pass
    SDPA's boolean [batch, 1, seq, seq] mask ready-made (transformers uses a 4-D mask as given;
    its own 2-D path asks ``mask.all()`` in eager mode, a device sync CUDA graph capture refuses)."""

    def __init__(self, model, mask: bool, pooled: bool = False, mask4d: bool = False):
        super().__init__()
        self.model = model
        self.mask = mask
        self.pooled = pooled
        self.mask4d = mask4d

    def _mask(self, attention_mask):
        if not self.mask:
            return None
        if self.mask4d:
            b, s = attention_mask.shape
            return attention_mask.bool()[:, None, None, :].expand(b, 1, s, s)
        return attention_mask

    def forward(self, input_ids, attention_mask, token_type_ids):
        if self.pooled:
            encoder = self.model.bert if hasattr(self.model, "bert") else self.model
            hidden = encoder(input_ids=input_ids, attention_mask=self._mask(attention_mask),
                             token_type_ids=token_type_ids).last_hidden_state.float()
            m = attention_mask.unsqueeze(-1).to(hidden.dtype)
            return (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1e-9)
        out = self.model(input_ids=input_ids, attention_mask=self._mask(attention_mask), token_type_ids=token_type_ids)
        return out.logits.float()


def build(fp32_model, lever: Lever, amax: dict[str, float] | None = None, *, pooled: bool = False):
    """The lever's module; eager levers with a mask get the ready-made 4-D mask (capturable)."""
    if lever.encoder == "lean":
        import levers_lean  # it builds on this module's ops (a top-level import would be circular)

        return levers_lean.LeanBert(fp32_model, lever, pooled=pooled).eval()
    return LeverModule(convert(fp32_model, lever, amax), lever.mask, pooled,
                       mask4d=lever.mask and lever.compile is None).eval()


_BACKENDS = {"flash": "FLASH_ATTENTION", "efficient": "EFFICIENT_ATTENTION", "cudnn": "CUDNN_ATTENTION",
             "math": "MATH"}


def attention_backend(lever: Lever):
    """Context manager pinning SDPA to the lever's backend (a no-op when it names none)."""
    if lever.attention is None:
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([getattr(SDPBackend, _BACKENDS[lever.attention])])


@contextlib.contextmanager
def sdpa_masks_seen():
    """Record what each scaled_dot_product_attention call got as its mask ("none" or dtype+shape)."""
    seen: list[str] = []
    original = F.scaled_dot_product_attention

    def spy(*args, **kwargs):
        mask = kwargs.get("attn_mask", args[3] if len(args) > 3 else None)
        seen.append("none" if mask is None else f"{str(mask.dtype).replace('torch.', '')} {list(mask.shape)}")
        return original(*args, **kwargs)

    F.scaled_dot_product_attention = spy
    try:
        yield seen
    finally:
        F.scaled_dot_product_attention = original


@contextlib.contextmanager
def inductor_settings(lever: Lever):
    """Freezing plus the lever's Inductor overrides, restored afterwards (unknown names raise)."""
    import torch._inductor.config as cfg

    overrides = {"freezing": True, **lever.inductor}
    saved = {}
    try:
        for key, value in overrides.items():
            saved[key] = getattr(cfg, key)  # AttributeError for a name this torch does not know
            setattr(cfg, key, value)
        yield
    finally:
        for key, value in saved.items():
            setattr(cfg, key, value)
