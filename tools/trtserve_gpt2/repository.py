"""The ``generate`` model's config (a ``ModelConfig`` protobuf) and its repository folder.

Layout: ``<repo>/generate/config.pbtxt`` and ``1/`` holding ``model.py`` (the one
``triton_models/generate.py``), a copy of ``trtserve_backend``, ``model.onnx`` and
``tokenizer.json``.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

import trtserve_backend
from trtserve_backend import contract
from trtserve_backend.generation.requests import GenerationLimits

BACKEND_DIR = Path(trtserve_backend.__file__).parent
MODEL_NAME = "generate"
TOKENIZER_FILE = "tokenizer.json"
ONNX_FILE = "model.onnx"


@dataclass(frozen=True)
class GenerateSettings:
    limits: GenerationLimits
    max_batch_size: int = 8  # Triton's: requests per execute (each is one sequence)
    max_decode_batch: int = 8  # sequences per decode step
    eos_token_id: int = 50256
    intra_op_threads: int = 0
    instance_count: int = 1


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
    config.instance_group.extend([mc.ModelInstanceGroup(kind=mc.ModelInstanceGroup.KIND_CPU, count=settings.instance_count)])
    params = {**{k: str(v) for k, v in asdict(settings.limits).items()},
              "engine": "onnxruntime", "onnx_file": ONNX_FILE, "tokenizer_file": TOKENIZER_FILE,
              "max_decode_batch": str(settings.max_decode_batch), "eos_token_id": str(settings.eos_token_id),
              "intra_op_threads": str(settings.intra_op_threads)}
    for key, value in params.items():
        config.parameters[key].string_value = value
    return config


def write_generate_model(root: Path, onnx_path: Path, tokenizer_dir: Path, settings: GenerateSettings,
                         name: str = MODEL_NAME) -> Path:
    model_dir = Path(root) / name
    version = model_dir / "1"
    shutil.rmtree(model_dir, ignore_errors=True)
    version.mkdir(parents=True)
    (model_dir / "config.pbtxt").write_text(text_format.MessageToString(generate_config(settings, name)))
    shutil.copy2(BACKEND_DIR / "triton_models" / "generate.py", version / "model.py")
    shutil.copytree(BACKEND_DIR, version / "trtserve_backend", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    try:
        os.link(onnx_path, version / ONNX_FILE)
    except OSError:
        shutil.copy2(onnx_path, version / ONNX_FILE)
    shutil.copy2(Path(tokenizer_dir) / TOKENIZER_FILE, version / TOKENIZER_FILE)
    (model_dir / "trtserve_generate.json").write_text(json.dumps({"onnx": str(onnx_path)}) + "\n")
    return model_dir
