"""Run an ONNX graph node by node with PyTorch, in the graph's own types (FP16-faithful).

The fidelity report's FP16-faithful executor (pipeline/validate.py): ONNX Runtime's CPU provider
computes FP16 MatMul/Add/Softmax in FP32 behind inserted casts, so FP16 overflow never shows
there. Here every op whose result is FP16 computes in FP32 from the FP16 inputs and rounds its
result to FP16 (FP16 storage, FP32 accumulation: what FP16 GPU kernels and TensorRT do), so
overflow to inf and FP16 rounding happen where they would on the GPU. Q/DQ are exact (round
half to even, saturate). Supports the ops of exported BERT-family encoders and of the fp16,
hybrid and int8 transformations; any other op raises :class:`ExecutorUnavailableError` at load.
"""
from __future__ import annotations

import numpy as np

from ..core.errors import ExecutorUnavailableError
from ..core.lazy import lazy_import
from .interpreter_ops import OPS, attrs

torch = lazy_import("torch")
numpy_helper = lazy_import("onnx.numpy_helper")


class TorchInterpreter:
    """Run an ONNX graph with PyTorch ops, node by node, in the graph's own types.

    Results typed FP16 are computed in FP32 from the FP16 inputs and rounded to FP16 after
    every op. Supports the ops of exported encoders (BERT-family) and of the fp16, hybrid and
    int8 transformations; any other op raises :class:`ExecutorUnavailableError` at load.
    """

    name = "torch-interpreter"

    def __init__(self, model, device: str | None = None) -> None:
        self.torch = torch
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = False  # FP32 accumulation means FP32, not TF32
        g = model.graph
        unsupported = sorted({n.op_type for n in g.node if n.op_type not in OPS or n.domain not in ("", "ai.onnx")})
        if unsupported:
            raise ExecutorUnavailableError(f"{self.name}: no implementation of op(s) {unsupported}")
        self.opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
        self.consts = {t.name: self._tensor(numpy_helper.to_array(t)) for t in g.initializer}
        self.nodes = [(n.op_type, list(n.input), list(n.output), attrs(n)) for n in g.node]
        self.inputs = [i.name for i in g.input if i.name not in self.consts]
        self.outputs = [o.name for o in g.output]
        # free every intermediate after its last reader (a BERT layer's activations at batch 32
        # x 256 tokens are hundreds of MB; keeping all of them would need gigabytes)
        last_use: dict[str, int] = {}
        for k, (_, ins, _, _) in enumerate(self.nodes):
            for name in ins:
                last_use[name] = k
        keep = set(self.consts) | set(self.outputs)
        self.release = [[] for _ in self.nodes]
        for name, k in last_use.items():
            if name and name not in keep:
                self.release[k].append(name)

    @property
    def label(self) -> str:
        return f"{self.name} ({self.device.type}; FP16 results rounded per op, FP32 accumulation)"

    def _tensor(self, array: np.ndarray):
        t = self.torch.from_numpy(np.array(array, copy=True))  # 0-d stays 0-d, and writable
        return t.to(self.device)

    def activate(self) -> None:
        """Nothing to start: the graph's constants are on the device since construction."""

    def close(self) -> None:
        self.consts = {}

    def infer(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        torch = self.torch
        env = dict(self.consts)
        for name in self.inputs:
            env[name] = self._tensor(feeds[name])
        with torch.inference_mode():
            for (op, ins, outs, node_attrs), release in zip(self.nodes, self.release):
                args = [env[i] if i else None for i in ins]
                result = OPS[op](self, args, node_attrs)
                if not isinstance(result, (list, tuple)):
                    result = (result,)
                for name, value in zip(outs, result):
                    if name:
                        env[name] = value
                for name in release:
                    env.pop(name, None)
        return [env[o].detach().to("cpu").numpy() for o in self.outputs]

