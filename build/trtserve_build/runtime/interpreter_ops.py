"""The ops of :class:`~.interpreter.TorchInterpreter`: each ONNX op as PyTorch, FP16-faithful
(float results computed in FP32 from the FP16 inputs, rounded to the graph's type)."""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from ..core.errors import ExecutorUnavailableError
from ..core.lazy import lazy_import

torch = lazy_import("torch")
F = lazy_import("torch.nn.functional")
onnx_helper = lazy_import("onnx.helper")
numpy_helper = lazy_import("onnx.numpy_helper")


def attrs(node) -> dict:
    """An ONNX node's attributes as Python values."""
    return {a.name: onnx_helper.get_attribute_value(a) for a in node.attribute}


_ONNX_TO_TORCH = None


def _torch_dtype(onnx_type: int):
    global _ONNX_TO_TORCH
    if _ONNX_TO_TORCH is None:
        _ONNX_TO_TORCH = {
            1: torch.float32, 2: torch.uint8, 3: torch.int8, 5: torch.int16, 6: torch.int32,
            7: torch.int64, 9: torch.bool, 10: torch.float16, 11: torch.float64, 16: torch.bfloat16,
        }
    return _ONNX_TO_TORCH[onnx_type]


def _is_float(t) -> bool:
    return t.is_floating_point()


def _compute(it, fn: Callable, args: Sequence, out_dtype=None):
    """``fn`` on the float args upcast to FP32; the result rounded to the args' float type."""
    floats = [a for a in args if a is not None and _is_float(a)]
    dtype = out_dtype or (floats[0].dtype if floats else None)
    up = [a.float() if (a is not None and _is_float(a)) else a for a in args]
    result = fn(*up)
    if dtype is not None and _is_float(result):
        result = result.to(dtype)
    return result


def _elementwise(fn):
    return lambda it, a, at: _compute(it, fn, a)


def _rounded_once(fn):
    """Ops whose FP16 kernels in PyTorch already compute each element in FP32 and round it once
    (add, subtract, multiply, softmax): on inputs of one float type, the op as is (3-4x faster on
    the CPU than FP32 copies, bit-identical: tests/unit/test_interpreter.py); else :func:`_compute`."""
    def run(it, a, at):
        if all(x is not None and _is_float(x) for x in a) and len({x.dtype for x in a}) == 1:
            return fn(*a)
        return _compute(it, fn, a)
    return run


def _int_div(it, a, at):
    x, y = a
    if _is_float(x):
        return _compute(it, lambda p, q: p / q, a)
    return it.torch.div(x, y, rounding_mode="trunc")


def _cast(it, a, at):
    to = _torch_dtype(at["to"])
    x = a[0]
    if _is_float(x) and not (to.is_floating_point or to == it.torch.bool):
        x = x.trunc()
    return x.to(to)


def _const_value(it, at):
    if "value" in at:
        return it._tensor(numpy_helper.to_array(at["value"]))
    for key, dtype in (("value_float", np.float32), ("value_int", np.int64)):
        if key in at:
            return it._tensor(np.array(at[key], dtype=dtype))
    for key, dtype in (("value_floats", np.float32), ("value_ints", np.int64)):
        if key in at:
            return it._tensor(np.array(at[key], dtype=dtype))
    raise ExecutorUnavailableError(f"Constant with attributes {sorted(at)} is not supported")


def _constant_of_shape(it, a, at):
    value = numpy_helper.to_array(at["value"]) if "value" in at else np.zeros(1, np.float32)
    shape = [int(d) for d in a[0].tolist()]
    return it._tensor(np.full(shape, value.reshape(-1)[0], dtype=value.dtype))


def _shape(it, a, at):
    dims = list(a[0].shape)
    start, end = at.get("start", 0), at.get("end", len(dims))
    return it._tensor(np.array(dims[start:end], dtype=np.int64))


def _gather(it, a, at):
    data, idx = a
    axis = at.get("axis", 0) % data.dim()
    idx = it.torch.where(idx < 0, idx + data.shape[axis], idx)
    out = data.index_select(axis, idx.reshape(-1))
    return out.reshape(tuple(data.shape[:axis]) + tuple(idx.shape) + tuple(data.shape[axis + 1:]))


def _slice(it, a, at):
    x, starts, ends = a[0], a[1].tolist(), a[2].tolist()
    axes = a[3].tolist() if len(a) > 3 and a[3] is not None else list(range(len(starts)))
    steps = a[4].tolist() if len(a) > 4 and a[4] is not None else [1] * len(starts)
    index = [slice(None)] * x.dim()
    for s, e, ax, st in zip(starts, ends, axes, steps):
        if st <= 0:
            raise ExecutorUnavailableError("Slice with a non-positive step is not supported")
        dim = x.shape[ax]
        s = max(0, min(dim, s + dim if s < 0 else s))
        e = max(0, min(dim, e + dim if e < 0 else e))
        index[ax % x.dim()] = slice(s, e, st)
    return x[tuple(index)]


def _axes(a, at, position: int = 1):
    if len(a) > position and a[position] is not None:
        return [int(v) for v in a[position].tolist()]
    return list(at.get("axes", []))


def _unsqueeze(it, a, at):
    x = a[0]
    axes = sorted(ax % (x.dim() + len(_axes(a, at))) for ax in _axes(a, at))
    for ax in axes:
        x = x.unsqueeze(ax)
    return x


def _squeeze(it, a, at):
    x = a[0]
    axes = _axes(a, at)
    if not axes:
        return x.squeeze()
    for ax in sorted((ax % x.dim() for ax in axes), reverse=True):
        x = x.squeeze(ax)
    return x


def _reshape(it, a, at):
    x, shape = a[0], [int(v) for v in a[1].tolist()]
    if not at.get("allowzero", 0):
        shape = [x.shape[i] if d == 0 else d for i, d in enumerate(shape)]
    return x.reshape(shape)


def _flatten(it, a, at):
    x = a[0]
    axis = at.get("axis", 1) % (x.dim() + 1) if x.dim() else 0
    lead = int(np.prod(x.shape[:axis])) if axis else 1
    return x.reshape(lead, -1)


def _expand(it, a, at):
    x, shape = a[0], tuple(int(v) for v in a[1].tolist())
    return x.expand(it.torch.broadcast_shapes(tuple(x.shape), shape))


def _range(it, a, at):
    start, limit, delta = (v.item() for v in a)
    return it.torch.arange(start, limit, delta, dtype=a[0].dtype, device=it.device)


def _reduce(kind: str):
    def run(it, a, at):
        x = a[0]
        if it.opset >= 18 or kind == "sum":
            axes = _axes(a, at)
        else:
            axes = list(at.get("axes", []))
        keep = bool(at.get("keepdims", 1))
        if not axes:
            if at.get("noop_with_empty_axes", 0):
                return x
            axes = list(range(x.dim()))

        def fn(v):
            if kind == "sum":
                return v.sum(dim=axes, keepdim=keep)
            if kind == "mean":
                return v.mean(dim=axes, keepdim=keep)
            if kind == "max":
                return v.amax(dim=axes, keepdim=keep)
            return v.amin(dim=axes, keepdim=keep)

        if not _is_float(x):
            return fn(x)
        return _compute(it, fn, [x])
    return run


def _softmax(it, a, at):
    axis = at.get("axis", -1)
    return _rounded_once(lambda v: it.torch.softmax(v, dim=axis))(it, a, at)


def _layernorm(it, a, at):
    x, scale = a[0], a[1]
    bias = a[2] if len(a) > 2 else None
    axis = at.get("axis", -1) % x.dim()
    eps = at.get("epsilon", 1e-5)
    shape = tuple(x.shape[axis:])
    return _compute(it, lambda v, s, b: F.layer_norm(v, shape, s.expand(shape) if s.shape != shape else s,
                                                      None if b is None else b.expand(shape), eps), [x, scale, bias])


def _gemm(it, a, at):
    alpha, beta = at.get("alpha", 1.0), at.get("beta", 1.0)

    def fn(p, q, c):
        p = p.T if at.get("transA", 0) else p
        q = q.T if at.get("transB", 0) else q
        y = alpha * (p @ q)
        return y if c is None else y + beta * c

    return _compute(it, fn, [a[0], a[1], a[2] if len(a) > 2 else None])


def _clip(it, a, at):
    lo = a[1] if len(a) > 1 and a[1] is not None else None
    hi = a[2] if len(a) > 2 and a[2] is not None else None
    if not _is_float(a[0]):
        return a[0].clamp(lo, hi)
    return _compute(it, lambda v, p, q: v.clamp(p, q), [a[0], lo, hi])


def _where(it, a, at):
    c, x, y = a
    return it.torch.where(c, x, y)


def _per_axis(param, x, axis):
    if param.dim() == 0 or param.numel() == 1:
        return param.reshape(())
    shape = [1] * x.dim()
    shape[axis % x.dim()] = -1
    return param.reshape(shape)


def _quantize(it, a, at):
    torch = it.torch
    x, scale = a[0], a[1]
    zp = a[2] if len(a) > 2 and a[2] is not None else torch.zeros((), dtype=torch.uint8, device=it.device)
    axis = at.get("axis", 1)
    q = torch.round(x.float() / _per_axis(scale, x, axis).float()) + _per_axis(zp, x, axis).float()
    info = torch.iinfo(zp.dtype)
    return q.clamp(info.min, info.max).to(zp.dtype)


def _dequantize(it, a, at):
    torch = it.torch
    x, scale = a[0], a[1]
    zp = a[2] if len(a) > 2 and a[2] is not None else torch.zeros((), dtype=x.dtype, device=it.device)
    axis = at.get("axis", 1)
    y = (x.float() - _per_axis(zp, x, axis).float()) * _per_axis(scale, x, axis).float()
    return y.to(scale.dtype)


def _compare(fn):
    def run(it, a, at):
        x, y = a
        if _is_float(x):
            return fn(x.float(), y.float())
        return fn(x, y)
    return run


def _split(it, a, at):
    """Split with the sizes as the second input (opset 13-17; the GPT-2 export's QKV split)."""
    x, sizes = a[0], a[1]
    return tuple(it.torch.split(x, [int(s) for s in sizes.tolist()], dim=int(at.get("axis", 0))))


def _cumsum(it, a, at):
    """CumSum along the axis input (RoBERTa-style position ids: cumsum of the non-pad mask)."""
    x, axis = a
    if at.get("exclusive", 0) or at.get("reverse", 0):
        raise ValueError("CumSum with exclusive/reverse is not implemented")
    return torch.cumsum(x, dim=int(axis.reshape(-1)[0]))


def _gather_elements(it, a, at):
    data, index = a
    axis = at.get("axis", 0) % data.dim()
    index = torch.where(index < 0, index + data.shape[axis], index)
    return torch.gather(data, axis, index)


def _tile(it, a, at):
    return a[0].repeat(*[int(r) for r in a[1].tolist()])


def _build_ops() -> dict[str, Callable]:
    return {
        "Constant": lambda it, a, at: _const_value(it, at),
        "ConstantOfShape": _constant_of_shape,
        "Identity": lambda it, a, at: a[0],
        "Cast": _cast,
        "Shape": _shape,
        "Size": lambda it, a, at: it._tensor(np.array(a[0].numel(), dtype=np.int64)),
        "Gather": _gather,
        "Slice": _slice,
        "Split": _split,
        "Unsqueeze": _unsqueeze,
        "Squeeze": _squeeze,
        "Reshape": _reshape,
        "Flatten": _flatten,
        "Transpose": lambda it, a, at: a[0].permute(at.get("perm", list(range(a[0].dim()))[::-1])),
        "Concat": lambda it, a, at: torch.cat([x for x in a if x is not None], dim=at["axis"]),
        "Expand": _expand,
        "Range": _range,
        "Where": _where,
        "Equal": _compare(torch.eq),
        "Less": _compare(torch.lt),
        "LessOrEqual": _compare(torch.le),
        "Greater": _compare(torch.gt),
        "GreaterOrEqual": _compare(torch.ge),
        "And": lambda it, a, at: a[0] & a[1],
        "Or": lambda it, a, at: a[0] | a[1],
        "Not": lambda it, a, at: ~a[0],
        "Add": _rounded_once(torch.add),
        "Sub": _rounded_once(torch.sub),
        "Mul": _rounded_once(torch.mul),
        "Div": _int_div,
        "Pow": lambda it, a, at: _compute(it, torch.pow, a, out_dtype=a[0].dtype),
        "Sqrt": _elementwise(torch.sqrt),
        "Exp": _elementwise(torch.exp),
        "Log": _elementwise(torch.log),
        "Neg": lambda it, a, at: -a[0],
        "Abs": lambda it, a, at: a[0].abs(),
        "Reciprocal": _elementwise(torch.reciprocal),
        "Erf": _elementwise(torch.erf),
        "Tanh": _elementwise(torch.tanh),
        "Sigmoid": _elementwise(torch.sigmoid),
        "Relu": lambda it, a, at: a[0].clamp_min(0),
        "Min": _elementwise(torch.minimum),
        "Max": _elementwise(torch.maximum),
        "MatMul": _elementwise(torch.matmul),
        "Gemm": _gemm,
        "Softmax": _softmax,
        "LayerNormalization": _layernorm,
        "ReduceSum": _reduce("sum"),
        "ReduceMean": _reduce("mean"),
        "ReduceMax": _reduce("max"),
        "ReduceMin": _reduce("min"),
        "Clip": _clip,
        # position ids from the padding index (RoBERTa, XLM-R, MPNet); DeBERTa's relative buckets
        "CumSum": _cumsum,
        "GatherElements": _gather_elements,
        "Tile": _tile,
        "Ceil": _elementwise(torch.ceil),
        "Sign": lambda it, a, at: torch.sign(a[0]),
        "QuantizeLinear": _quantize,
        "DequantizeLinear": _dequantize,
    }


class _LazyOps(dict):
    def _load(self):
        if not dict.__len__(self):
            self.update(_build_ops())

    def __contains__(self, key):
        self._load()
        return dict.__contains__(self, key)

    def __getitem__(self, key):
        self._load()
        return dict.__getitem__(self, key)


#: op type -> implementation ``(interpreter, inputs, attributes) -> output(s)``; built on first use.
OPS: dict[str, Callable] = _LazyOps()
