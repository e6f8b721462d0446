"""ONNX Runtime on the CPU, refusing graphs it would silently compute in other types."""
from __future__ import annotations

import tempfile
from collections import Counter
from pathlib import Path

import numpy as np

from ..core.errors import ExecutorUnavailableError
from ..core.lazy import lazy_import

ort = lazy_import("onnxruntime")
onnx = lazy_import("onnx")


def ort_upcast_ops(onnx_path: Path) -> Counter:
    """Op types (with counts) whose inputs ONNX Runtime's CPU provider casts to another type
    because it has no kernel for the graph's type (its ``InsertedPrecisionFreeCast_`` nodes)."""
    with tempfile.TemporaryDirectory(prefix="ort-probe-") as tmp:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        options.optimized_model_filepath = str(Path(tmp) / "probe.onnx")
        options.log_severity_level = 3
        ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        probed = onnx.load(options.optimized_model_filepath, load_external_data=False)
    inserted = {n.output[0] for n in probed.graph.node if n.name.startswith("InsertedPrecisionFreeCast_")}
    return Counter(n.op_type for n in probed.graph.node for x in n.input if x in inserted)


class OrtExecutor:
    """ONNX Runtime on the CPU; refuses graphs it would silently compute in other types.

    ORT 1.31's CPU provider has no FP16 MatMul/Add/Mul/Softmax/Erf kernels: it inserts casts
    and computes those in FP32, dropping the FP16 rounding between them, so an FP16 overflow
    never happens there. The probe detects those inserted casts and refuses such graphs.
    """

    name = "onnxruntime-cpu"

    def __init__(self, onnx_path: Path, intra_op_threads: int = 0) -> None:
        upcast = ort_upcast_ops(onnx_path)
        if upcast:
            listed = ", ".join(f"{op}x{n}" for op, n in sorted(upcast.items()))
            raise ExecutorUnavailableError(
                f"{self.name}: no kernels in the graph's types for {sum(upcast.values())} node input(s) "
                f"({listed}); ONNX Runtime would run them in FP32 and skip the FP16 rounding"
            )
        self.onnx_path = Path(onnx_path)
        self.intra_op_threads = intra_op_threads
        self.session = None
        self.inputs: list[str] = []
        self.label = f"{self.name} {ort.__version__}"
        self.activate()

    def activate(self) -> None:
        if self.session is not None:
            return
        options = ort.SessionOptions()
        if self.intra_op_threads:
            options.intra_op_num_threads = self.intra_op_threads
        self.session = ort.InferenceSession(str(self.onnx_path), options, providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]

    def infer(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.session.run(None, {n: feeds[n] for n in self.inputs})

    def close(self) -> None:
        self.session = None
