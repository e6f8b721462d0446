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
#: What the torch backend serves: "torchscript" (the Hugging Face modules traced), "fused" (the
#: fused BERT-family encoder, models/fused.py, traced) or "aoti" (the fused encoder compiled ahead of
#: time by AOTInductor; its CUDA packages crash at load on torch 2.11+cu130, bench/gpu/NOTES.md).
TORCH_ENGINE_FORMATS = ("torchscript", "fused", "aoti")
#: the formats made of the fused encoder: two programs (masked, and full rows without a mask)
FUSED_FORMATS = ("fused", "aoti")

ENGINE_BACKENDS = ("onnxruntime", "tensorrt", "torch")
#: Engine backends that run inside a Python-backend model (served as one model per deployment).
PYTHON_ENGINE_BACKENDS = ("onnxruntime", "torch")
#: How a deployment is served: "ensemble" (tokenizer -> encoder -> postprocess, three models),
#: "single" (one Python model doing all three; only where the engine runs in Python), or "auto":
#: single for the Python engine backends, ensemble for tensorrt.
TOPOLOGIES = ("auto", "ensemble", "single")
#: An instance knob's value that sizes it from the host's cores (stages.triton_config.host_sized).
AUTO = "auto"
INSTANCE_KNOBS = ("instance_count", "tokenizer_instances", "postprocess_instances", "intra_op_threads",
                  "hot_intra_op_threads", "solo_intra_op_threads")
#: Instance knobs that may be 0 (ONNX Runtime's default thread count: one per core).
THREAD_KNOBS = ("intra_op_threads", "hot_intra_op_threads", "solo_intra_op_threads")
VARIANTS = ("cpu", "gpu", "gpu_torch")

CALIBRATION_METHODS = ("percentile", "entropy", "max")
#: "linear": MatMul/Gemm with weights; "all": the attention MatMuls too.
INT8_MATMUL_MODES = ("linear", "all")

#: Labelled datasets (name as written in a spec) -> label names indexed by label id.
#: data.datasets holds one loader per name (a unit test checks that the two agree).
DATASET_LABELS: dict[str, tuple[str, ...]] = {
    "vader-movie-reviews": contract.SENTIMENT_LABELS,
}
