"""Allowed values, each spelled once: the spec validates against these, the stages use them."""
from __future__ import annotations

import trtserve_contract as contract

#: Every precision a deployment can ask for, in the order reports list them.
PRECISIONS = ("fp32", "fp16", "hybrid", "int8")
#: The precisions made from the FP32 export by a graph transformation (and gated by fidelity).
TRANSFORMED_PRECISIONS = ("fp16", "hybrid", "int8")
#: Precisions the torch backend (TorchScript) implements.
TORCH_PRECISIONS = ("fp32", "fp16", "hybrid")
#: transformers attention implementations the torch backend traces.
TORCH_ATTENTION = ("sdpa", "eager")

ENGINE_BACKENDS = ("onnxruntime", "tensorrt", "torch")
VARIANTS = ("cpu", "gpu", "gpu_torch")

CALIBRATION_METHODS = ("percentile", "entropy", "max")
#: "linear": MatMul/Gemm with weights; "all": the attention MatMuls too.
INT8_MATMUL_MODES = ("linear", "all")

#: Labelled datasets (name as written in a spec) -> label names indexed by label id.
#: data.datasets holds one loader per name (a unit test checks that the two agree).
DATASET_LABELS: dict[str, tuple[str, ...]] = {
    "vader-movie-reviews": contract.SENTIMENT_LABELS,
}
