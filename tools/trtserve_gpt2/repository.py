"""The ``generate`` model's config (a ``ModelConfig`` protobuf) and its repository folder.

Layout: ``<repo>/generate/config.pbtxt`` and ``1/`` holding ``model.py`` (the one
``triton_models/generate.py``), a copy of ``trtserve_backend``, ``model.onnx`` and
``tokenizer.json`` (and ``trtserve_contract``).
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

import trtserve_backend
import trtserve_contract
import trtserve_contract as contract
from trtserve_backend.generation.requests import GenerationLimits
from trtserve_backend.parameters import GenerateParameters

BACKEND_DIR = Path(trtserve_backend.__file__).parent
CONTRACT_DIR = Path(trtserve_contract.__file__).parent
MODEL_NAME = "generate"
TOKENIZER_FILE = "tokenizer.json"
ONNX_FILE = "model.onnx"
CHECKPOINT_DIR = "checkpoint"


@dataclass(frozen=True)
class GenerateSettings:
    limits: GenerationLimits
    max_batch_size: int = 8  # Triton's: requests per execute (each is one sequence)
    max_decode_batch: int = 8  # sequences per decode step
    eos_token_id: int = 50256
    intra_op_threads: int = 0
    instance_count: int = 1
    engine: str = "onnxruntime"  # | "torch" (static KV cache + CUDA graphs, KIND_GPU)
    precision: str = "fp32"  # torch: fp32 | fp16 | bf16
    graph_batch_sizes: tuple[int, ...] = ()  # torch: decode steps captured as CUDA graphs
    gpu: bool = False
    #: bytes of PROMPT per request, checked before tokenizing (the encoder deployments' default)
    max_request_text_bytes: int = 1_048_576


def _io(cls, name: str, dtype: str, dims, optional: bool = False):
    t = cls(name=name, data_type=mc.DataType.Value(dtype), dims=list(dims))
    if optional:
        t.optional = True
    return t


def generate_config(settings: GenerateSettings, name: str = MODEL_NAME) -> mc.ModelConfig:
    if settings.max_batch_size < 8:
        raise ValueError(f"generate: max_batch_size must be >= 8 (the contract), got {settings.max_batch_size}")
    config = mc.ModelConfig(name=name, backend="python", max_batch_size=settings.max_batch_size)
    config.model_transaction_policy.decoupled = True
    config.dynamic_batching.CopyFrom(mc.ModelDynamicBatching())
    config.input.extend([
        _io(mc.ModelInput, contract.PROMPT, "TYPE_STRING", [1]),
        _io(mc.ModelInput, contract.MAX_NEW_TOKENS, "TYPE_INT32", [1], optional=True),
        _io(mc.ModelInput, contract.TEMPERATURE, "TYPE_FP32", [1], optional=True),
        _io(mc.ModelInput, contract.TOP_P, "TYPE_FP32", [1], optional=True),
        _io(mc.ModelInput, contract.SEED, "TYPE_INT64", [1], optional=True),
        _io(mc.ModelInput, contract.STOP, "TYPE_STRING", [-1], optional=True),
    ])
    config.output.extend([
        _io(mc.ModelOutput, contract.TEXT, "TYPE_STRING", [1]),
        _io(mc.ModelOutput, contract.FINISH_REASON, "TYPE_STRING", [1]),
        _io(mc.ModelOutput, contract.TOKENS, "TYPE_INT32", [1]),
    ])
    kind = mc.ModelInstanceGroup.KIND_GPU if settings.gpu else mc.ModelInstanceGroup.KIND_CPU
    config.instance_group.extend([mc.ModelInstanceGroup(kind=kind, count=settings.instance_count)])
    if settings.engine not in ("onnxruntime", "torch"):
        raise ValueError(f"generate: engine must be onnxruntime or torch, got {settings.engine!r}")
    engine = (dict(onnx_file=ONNX_FILE, intra_op_threads=settings.intra_op_threads)
              if settings.engine == "onnxruntime" else
              dict(checkpoint_dir=CHECKPOINT_DIR, precision=settings.precision,
                   graph_batch_sizes=tuple(settings.graph_batch_sizes)))
    params = GenerateParameters(
        tokenizer_file=TOKENIZER_FILE, engine=settings.engine, **settings.limits.parameters(),
        max_decode_batch=settings.max_decode_batch, eos_token_id=settings.eos_token_id,
        max_request_text_bytes=settings.max_request_text_bytes, **engine)
    for key, value in params.to_config().items():
        config.parameters[key].string_value = value
    return config


def write_generate_model(root: Path, engine_file: Path, tokenizer_dir: Path, settings: GenerateSettings,
                         name: str = MODEL_NAME) -> Path:
    """``engine_file``: the ONNX export (engine onnxruntime) or the checkpoint folder (engine torch)."""
    model_dir = Path(root) / name
    version = model_dir / "1"
    shutil.rmtree(model_dir, ignore_errors=True)
    version.mkdir(parents=True)
    (model_dir / "config.pbtxt").write_text(text_format.MessageToString(generate_config(settings, name)))
    shutil.copy2(BACKEND_DIR / "triton_models" / "generate.py", version / "model.py")
    shutil.copytree(BACKEND_DIR, version / "trtserve_backend", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.copytree(CONTRACT_DIR, version / "trtserve_contract", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    if settings.engine == "onnxruntime":
        try:
            os.link(engine_file, version / ONNX_FILE)
        except OSError:
            shutil.copy2(engine_file, version / ONNX_FILE)
    else:
        (version / CHECKPOINT_DIR).mkdir()
        for f in Path(engine_file).iterdir():
            if f.name == "config.json" or f.suffix in (".safetensors", ".bin"):
                shutil.copy2(f, version / CHECKPOINT_DIR / f.name)
    shutil.copy2(Path(tokenizer_dir) / TOKENIZER_FILE, version / TOKENIZER_FILE)
    (model_dir / "trtserve_generate.json").write_text(json.dumps({"engine_file": str(engine_file)}) + "\n")
    return model_dir
