"""Precision conversion of a PyTorch (Hugging Face) model for the torch backend: fp32/fp16/hybrid.

``fp16``: every weight and activation in FP16. ``hybrid``: ``fp16`` with LayerNorm in FP32
(FP32 weights, input cast up, output cast down) and the attention softmax in FP32: with
``attention = "sdpa"`` PyTorch's fused attention kernels keep the softmax in FP32 registers;
with ``attention = "eager"`` an eager attention function computes scores + mask and the
softmax in FP32.
"""
from __future__ import annotations

import copy
import functools

from ..core.enums import TORCH_ATTENTION, TORCH_PRECISIONS
from ..core.errors import TorchScriptError
from ..core.lazy import lazy_import

torch = lazy_import("torch")
F = lazy_import("torch.nn.functional")
transformers = lazy_import("transformers")
masking_utils = lazy_import("transformers.masking_utils")

#: Attention implementations registered with transformers for ``attention = "eager"``:
#: fp32/fp16, and hybrid (softmax in FP32). Both build their mask with device-side ops only.
EAGER_ATTENTION = "trtserve_eager"
FP32_SOFTMAX_ATTENTION = "trtserve_eager_fp32_softmax"


@functools.cache
def _fp32_layer_norm_class():
    class Fp32LayerNorm(torch.nn.Module):
        """LayerNorm in FP32 inside an FP16 model: FP32 weights, input cast up, output cast back."""

        def __init__(self, ln: torch.nn.LayerNorm):
            super().__init__()
            self.normalized_shape = tuple(ln.normalized_shape)
            self.eps = float(ln.eps)
            self.weight = torch.nn.Parameter(ln.weight.detach().float().clone(), requires_grad=False) \
                if ln.weight is not None else None
            self.bias = torch.nn.Parameter(ln.bias.detach().float().clone(), requires_grad=False) \
                if ln.bias is not None else None

        def forward(self, x):
            return F.layer_norm(x.float(), self.normalized_shape, self.weight, self.bias, self.eps).to(x.dtype)

    return Fp32LayerNorm


def eager_fp32_softmax_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """transformers' eager attention with scores + mask and the softmax in FP32 (the hybrid policy)."""
    if scaling is None:
        scaling = query.size(-1) ** -0.5
    scores = torch.matmul(query, key.transpose(2, 3)).float() * scaling
    if attention_mask is not None:
        scores = scores + attention_mask.float()
    probs = torch.softmax(scores, dim=-1).to(value.dtype)
    output = torch.matmul(probs, value).transpose(1, 2).contiguous()
    return output, probs


def eager_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """transformers' eager attention (softmax in the activations' dtype), for inference."""
    if scaling is None:
        scaling = query.size(-1) ** -0.5
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        scores = scores + attention_mask
    probs = torch.softmax(scores, dim=-1)
    output = torch.matmul(probs, value).transpose(1, 2).contiguous()
    return output, probs


def capture_safe_eager_mask(*args, dtype=None, **kwargs):
    """transformers' eager mask (0 = attend, dtype's minimum = masked) built from device-side ops.

    transformers 5.17 builds it with ``torch.where(mask, torch.tensor(0.0, device=...), min)``:
    traced, the scalar is a host constant copied to the GPU on every call, which CUDA graph
    capture refuses (seen on an H200). ``torch.zeros((), device=...)`` is a kernel instead.
    """
    dtype = dtype or torch.float32
    kwargs.pop("allow_is_causal_skip", None)
    mask = masking_utils.sdpa_mask(*args, allow_is_causal_skip=False, **kwargs)
    if mask is None:
        return None
    return torch.where(mask, torch.zeros((), device=mask.device, dtype=dtype), torch.finfo(dtype).min)


#: Our attention implementations: name -> (attention function, mask function).
_IMPLEMENTATIONS = {
    EAGER_ATTENTION: (eager_attention, capture_safe_eager_mask),
    FP32_SOFTMAX_ATTENTION: (eager_fp32_softmax_attention, capture_safe_eager_mask),
}


def _register(name: str) -> None:
    try:
        attention_interface = transformers.AttentionInterface
        mask_interface = masking_utils.AttentionMaskInterface
    except (ImportError, AttributeError) as e:  # pragma: no cover - depends on the transformers release
        raise TorchScriptError(
            f"this transformers release cannot register a custom attention function ({e}); "
            "use attention = \"sdpa\"") from e
    attention, mask = _IMPLEMENTATIONS[name]
    attention_interface.register(name, attention)
    mask_interface.register(name, mask)


def attention_implementation(attention: str, precision: str) -> str:
    """The transformers attention implementation name for an (attention, precision) pair."""
    if attention not in TORCH_ATTENTION:
        raise TorchScriptError(f"attention {attention!r}; known: {TORCH_ATTENTION}")
    if attention == "eager":
        return FP32_SOFTMAX_ATTENTION if precision == "hybrid" else EAGER_ATTENTION
    return attention


def convert(hf_model, precision: str, attention: str):
    """Return a converted deep copy of ``hf_model`` (the original stays FP32 as the reference)."""
    if precision not in TORCH_PRECISIONS:
        raise TorchScriptError(f"precision {precision!r} is not available for the torch backend; "
                               f"choose one of {TORCH_PRECISIONS}")
    model = copy.deepcopy(hf_model).eval()
    name = attention_implementation(attention, precision)
    if name in _IMPLEMENTATIONS:
        _register(name)
    model.config._attn_implementation = name
    if precision == "fp32":
        return model.float()
    model.half()
    if precision == "hybrid":
        # The FP32 LayerNorms take the checkpoint's FP32 weights (``hf_model``'s, by module name),
        # not the FP16-rounded ones ``model.half()`` left: otherwise hybrid computed exactly what
        # fp16 does (PyTorch's FP16 LayerNorm already reduces in FP32).
        Fp32LayerNorm = _fp32_layer_norm_class()
        originals = dict(hf_model.named_modules())
        for parent_name, parent in list(model.named_modules()):
            for child_name, child in list(parent.named_children()):
                if isinstance(child, torch.nn.LayerNorm):
                    source = originals[f"{parent_name}.{child_name}" if parent_name else child_name]
                    setattr(parent, child_name, Fp32LayerNorm(source))
    return model


