"""Microbenchmarks for engine_levers.py: the pieces of one BERT layer at the benchmark's shape.

``attention``: SDPA per backend (PyTorch's choice, flash, efficient, cuDNN) with no mask, an
all-true boolean mask, a padded one ([b, 1, s, s], as Hugging Face builds it), the padded one as a
boolean [b, 1, 1, s] and as an additive fp16 [b, 1, 1, s] key-padding bias, and no mask on q/k/v
viewed from one packed [b, s, 3*H] projection (the lean encoder's layout), fp16. ``gemm``: the
layer's four projections in fp16 (TFLOP/s), the FFN-up GEMM followed by GELU (erf, tanh) or with
bias + GELU in the cuBLASLt epilogue (``torch._addmm_activation``), and the same four shapes as
FP8 e4m3 GEMMs (``torch._scaled_mm``, per-tensor scales; with and without fast accumulation;
rowwise scales, fp16 out). ``sdpa_trace``: what torch.compile hands SDPA and which attention ops
the traced ATen graph ends up with (the backend is chosen at trace time).
``bound``: the sum of one layer's GEMMs x layers -> seq/s if nothing but the GEMMs ran (fp16, fp8).
Every item is tried on its own; a failure is recorded as the item's error.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

_BACKENDS = {"flash": "FLASH_ATTENTION", "efficient": "EFFICIENT_ATTENTION", "cudnn": "CUDNN_ATTENTION"}


def _try(store: dict, key: str, fn, timer, rows: int, log, flops: float | None = None) -> None:
    try:
        r = timer(fn, rows)
        entry = {"p50_ms": r["p50_ms"], "back_to_back_ms": r["back_to_back_ms"]}
        if flops:
            entry["tflops"] = flops / (r["back_to_back_ms"] / 1000.0) / 1e12
        store[key] = entry
        log(f"micro {key}: {r['back_to_back_ms']:.3f} ms" + (f", {entry['tflops']:.0f} TFLOP/s" if flops else ""))
    except Exception as e:  # noqa: BLE001 - an unsupported kernel is a result
        store[key] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
        log(f"micro {key}: {store[key]['error']}")


def attention(store: dict, batch: int, seq: int, heads: int, head_dim: int, device, timer, log) -> None:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    g = torch.Generator(device=device).manual_seed(0)
    dtype = torch.float16
    q, k, v = (torch.randn(batch, heads, seq, head_dim, generator=g, device=device, dtype=dtype) for _ in range(3))
    lengths = torch.randint(seq // 4, seq + 1, (batch,), generator=g, device=device)
    padded = (torch.arange(seq, device=device)[None, :] < lengths[:, None])[:, None, None, :].expand(batch, 1, seq, seq)
    keys = padded[:, :, :1, :]  # [b, 1, 1, s]
    masks = {"no mask": None, "all-true mask": torch.ones(batch, 1, seq, seq, dtype=torch.bool, device=device),
             "padded mask": padded.contiguous(), "padded bool [b,1,1,s]": keys.contiguous(),
             "padded additive fp16 [b,1,1,s]": ((~keys).to(dtype) * torch.finfo(dtype).min).contiguous()}
    packed = torch.randn(batch, seq, 3, heads, head_dim, generator=g, device=device, dtype=dtype)
    backends = {"default": None, **({k: v for k, v in _BACKENDS.items()} if device.type == "cuda" else {})}
    for bname, backend in backends.items():
        for mname, mask in [*masks.items(), ("no mask, packed qkv", None)]:
            qkv = packed.permute(2, 0, 3, 1, 4).unbind(0) if "packed" in mname else (q, k, v)

            def call(mask=mask, qkv=qkv):
                return F.scaled_dot_product_attention(*qkv, attn_mask=mask)

            def run(call=call, backend=backend):
                if backend is None:
                    return call()
                with sdpa_kernel([getattr(SDPBackend, backend)]):
                    return call()

            _try(store, f"sdpa {bname}, {mname}", run, timer, batch, log)


def gemms(store: dict, tokens: int, hidden: int, inner: int, device, timer, log) -> None:
    dtype = torch.float16
    g = torch.Generator(device=device).manual_seed(1)
    shapes = {"qkv": (hidden, 3 * hidden), "attn out": (hidden, hidden), "ffn up": (hidden, inner),
              "ffn down": (inner, hidden)}
    xs = {k: torch.randn(tokens, k, generator=g, device=device, dtype=dtype) for k in {hidden, inner}}
    for name, (k, n) in shapes.items():
        w = torch.randn(n, k, generator=g, device=device, dtype=dtype) * 0.02
        b = torch.randn(n, generator=g, device=device, dtype=dtype) * 0.02
        x = xs[k]
        flops = 2.0 * tokens * k * n
        _try(store, f"fp16 linear {name} [{tokens}x{k}]x[{k}x{n}]", lambda x=x, w=w, b=b: F.linear(x, w, b),
             timer, tokens, log, flops)
        if name == "ffn up":
            _try(store, "fp16 ffn up + GELU erf (2 kernels)", lambda: F.gelu(F.linear(x, w, b)), timer, tokens, log, flops)
            _try(store, "fp16 ffn up + GELU tanh (2 kernels)", lambda: F.gelu(F.linear(x, w, b), approximate="tanh"),
                 timer, tokens, log, flops)
            _try(store, "fp16 ffn up, bias+GELU in the cuBLASLt epilogue",
                 lambda: torch._addmm_activation(b, x, w.t(), use_gelu=True), timer, tokens, log, flops)
        xq = (x.float() / x.float().abs().max() * 448).to(torch.float8_e4m3fn)
        wq = (w.float() / w.float().abs().max() * 448).to(torch.float8_e4m3fn)
        one = torch.ones((), device=device, dtype=torch.float32)
        for fast in (False, True):
            _try(store, f"fp8 {'fast-accum ' if fast else ''}{name} [{tokens}x{k}]x[{k}x{n}]",
                 lambda xq=xq, wq=wq, b=b, fast=fast: torch._scaled_mm(xq, wq.t(), scale_a=one, scale_b=one, bias=b,
                                                                       out_dtype=dtype, use_fast_accum=fast),
                 timer, tokens, log, flops)
        rows, cols = torch.ones(tokens, 1, device=device), torch.ones(1, n, device=device)
        _try(store, f"fp8 rowwise {name} [{tokens}x{k}]x[{k}x{n}]",
             lambda xq=xq, wq=wq, b=b, cols=cols: torch._scaled_mm(xq, wq.t(), scale_a=rows, scale_b=cols, bias=b,
                                                                   out_dtype=dtype), timer, tokens, log, flops)
    for label, prefix in (("fp16", "fp16 linear "), ("fp8", "fp8 ")):
        times = [store.get(f"{prefix}{n} [{tokens}x{k}]x[{k}x{n2}]", {}).get("back_to_back_ms")
                 for n, (k, n2) in shapes.items()]
        if all(t is not None for t in times):
            store[f"bound {label}"] = {"ms_per_layer": sum(times)}


def run_all(store: dict, *, batch: int, seq: int, config, device, timer, log, save) -> None:
    with torch.no_grad():
        attention(store.setdefault("attention", {}), batch, seq, config.num_attention_heads,
                  config.hidden_size // config.num_attention_heads, device, timer, log)
        save()
        g = store.setdefault("gemm", {})
        gemms(g, batch * seq, config.hidden_size, config.intermediate_size, device, timer, log)
        for label in ("fp16", "fp8"):
            if f"bound {label}" in g:
                ms = g[f"bound {label}"]["ms_per_layer"] * config.num_hidden_layers
                g[f"bound {label}"].update({"ms_per_batch": ms, "seq_per_s": batch * 1000.0 / ms})
                log(f"micro GEMM-only bound {label}: {ms:.2f} ms per {batch}x{seq} -> {batch * 1000.0 / ms:.0f} seq/s")
        save()


def sdpa_trace(module, feeds) -> dict:
    """What ``torch.compile`` hands SDPA in ``module`` (the Dynamo graph's attn_mask: dtype, shape,
    stride) and the attention ops of the ATen graph traced from it (SDPA's backend is chosen there,
    on fake tensors: ``_scaled_dot_product_cudnn_attention``, ``..._flash_...``, or the math
    backend's bmm + ``_safe_softmax``), counted by name."""
    from torch.fx.experimental.proxy_tensor import make_fx

    seen: dict = {"masks": [], "aten": {}}

    def backend(gm, example_inputs):
        for node in gm.graph.nodes:
            if "scaled_dot_product" in str(node.target):
                mask = node.kwargs.get("attn_mask", node.args[3] if len(node.args) > 3 else None)
                val = mask.meta.get("example_value") if isinstance(mask, torch.fx.Node) else None
                seen["masks"].append("none" if mask is None else str(mask) if val is None else
                                     f"{str(val.dtype).replace('torch.', '')} {list(val.shape)} stride {list(val.stride())}")
        for node in make_fx(gm, tracing_mode="fake")(*example_inputs).graph.nodes:
            name = str(node.target)
            if any(k in name for k in ("scaled_dot_product", "softmax", "bmm", "self_attention")):
                seen["aten"][name] = seen["aten"].get(name, 0) + 1
        return gm.forward

    torch._dynamo.reset()
    try:
        with torch.no_grad():
            torch.compile(module, backend=backend, dynamic=False)(*feeds)
    finally:
        torch._dynamo.reset()
    seen["masks"] = sorted(set(seen["masks"]))
    return seen


def kernel_category(name: str) -> str:
    name = name.lower()
    if any(k in name for k in ("fmha", "flash", "attention", "sdpa", "mem_eff", "efficient", "cudnn")):
        return "attention"
    if any(k in name for k in ("gemm", "xmma", "cutlass", "nvjet", "cublas", "sm90_", "matmul", "scaled_mm")):
        return "gemm"
    if "layer_norm" in name or "layernorm" in name:
        return "layernorm"
    if "gelu" in name:
        return "gelu"
    if "memcpy" in name or "memset" in name:
        return "memcpy"
    return "other"


def kernel_breakdown(fn, iters: int = 2) -> dict:
    """GPU time per call of ``fn`` by kernel category, and its largest kernels (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            fn()
        torch.cuda.synchronize()
    per: dict[str, float] = {}
    top = []
    kernels = 0
    for evt in prof.key_averages():
        us = getattr(evt, "self_device_time_total", None) or getattr(evt, "self_cuda_time_total", 0)
        if not us:
            continue
        ms = us / iters / 1000.0
        per[kernel_category(evt.key)] = per.get(kernel_category(evt.key), 0.0) + ms
        top.append((round(ms, 3), evt.count // iters, evt.key[:100]))
        kernels += evt.count // iters
    top.sort(reverse=True)
    return {"ms": {k: round(v, 3) for k, v in sorted(per.items())}, "total_ms": round(sum(per.values()), 3),
            "kernels_per_call": kernels, "top": top[:10]}
