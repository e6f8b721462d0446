"""The records built artifacts carry, read by later stages instead of re-deriving anything.

:class:`ExportManifest` (``export.json`` in the export folder), :class:`EngineRecord` (beside a
TensorRT plan) and :class:`TorchScriptRecord` (beside and inside a TorchScript file).
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .files import write_text_atomic
from .paths import MANIFEST_FILE

ENGINE_RECORD_SCHEMA = 1
#: 2: hybrid's FP32 LayerNorms carry the checkpoint's FP32 weights (1: FP16-rounded ones)
TORCHSCRIPT_FORMAT_VERSION = 2


@dataclass(frozen=True)
class ExportManifest:
    """What the export produced; later stages read this instead of re-deriving it."""

    name: str
    task: str
    fingerprint: str
    checkpoint: str
    inputs: tuple[str, ...]
    output: str
    hidden_size: int
    num_labels: int
    labels: tuple[str, ...]
    pad_token_id: int
    opset: int
    onnx_sha256: str
    max_abs_diff: float
    min_cosine: float
    checked_texts: int
    seconds: float
    #: The registered architecture (core/architectures.py) the checkpoint is.
    architecture: str = ""
    #: Decoders (generation): layers, heads, head_dim and context_length of the graph.
    geometry: dict[str, int] = field(default_factory=dict)

    @classmethod
    def read(cls, folder: Path) -> "ExportManifest":
        data = json.loads((Path(folder) / MANIFEST_FILE).read_text())
        data["inputs"] = tuple(data["inputs"])
        data["labels"] = tuple(data["labels"])
        return cls(**data)

    def write(self, folder: Path) -> None:
        write_text_atomic(Path(folder) / MANIFEST_FILE, json.dumps(asdict(self), indent=2) + "\n")


@dataclass
class EngineRecord:
    """What a TensorRT build made, from what, for which GPUs (``<plan>.json``)."""

    tensorrt_flavour: str
    tensorrt_version: str
    #: Compute capabilities the plan targets, e.g. ["9.0"], or RTX's portable default set.
    compute_capabilities: list[str]
    #: Where that came from: "nvidia-smi", "torch.cuda", "unknown", "tensorrt_rtx default", "explicit".
    compute_capability_source: str
    precision: str
    #: One entry per optimization profile: {input name: {"min": [b, s], "opt": ..., "max": ...}}.
    profiles: list[dict[str, dict[str, list[int]]]]
    inputs: list[str]
    outputs: list[str]
    strongly_typed: bool
    #: TF32 builder flag after configuration (None where the flavour has no such flag).
    tf32: bool | None
    workspace_bytes: int
    onnx_path: str
    onnx_sha256: str
    plan_path: str
    plan_sha256: str
    plan_bytes: int
    build_seconds: float
    hostname: str
    created_utc: str
    spec_name: str = ""
    #: Only full TensorRT plans load in Triton's ``tensorrt`` backend.
    triton_loadable: bool = False
    schema: int = ENGINE_RECORD_SCHEMA

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> "EngineRecord":
        data = json.loads(text)
        names = {f.name for f in dataclasses.fields(cls)}
        try:
            return cls(**{k: v for k, v in data.items() if k in names})
        except TypeError as e:
            raise ValueError(f"not an engine record: {e}") from e

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "EngineRecord":
        return cls.from_json(Path(path).read_text())


@dataclass
class TorchScriptRecord:
    """What a TorchScript build made and how it was checked; stored beside and inside the file."""

    task: str
    precision: str
    attention: str
    inputs: tuple[str, ...]
    output: str
    trace_device_type: str
    target_device_type: str
    retargeted_constants: int
    torch_version: str
    transformers_version: str
    trace_vs_eager: dict[str, float]
    vs_fp32: dict[str, float]
    gate: dict[str, Any]
    checked_rows: int
    seconds: float
    source: str = ""
    fingerprint: str = ""
    sha256: str = ""
    format: int = TORCHSCRIPT_FORMAT_VERSION
    #: "torchscript" (traced Hugging Face modules) or "aoti" (the fused encoder, AOTInductor)
    engine_format: str = "torchscript"
    #: aoti: the no-mask program (batches without padding) against the masked one, row by row
    full_rows_vs_masked: dict[str, float] = field(default_factory=dict)
    created_utc: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))

    def metadata(self) -> dict:
        """The part stored inside the archive (everything but the file's own hash)."""
        d = asdict(self)
        d.pop("sha256")
        return d

    def write(self, path: Path) -> None:
        write_text_atomic(Path(path), json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def read(cls, path: Path) -> "TorchScriptRecord":
        data = json.loads(Path(path).read_text())
        data["inputs"] = tuple(data["inputs"])
        return cls(**data)


def artifact_sha256(record_file: Path) -> str | None:
    """The sha256 an engine record (TensorRT ``plan_sha256`` or TorchScript ``sha256``) names."""
    try:
        data = json.loads(Path(record_file).read_text())
    except (OSError, ValueError):
        return None
    return data.get("plan_sha256") or data.get("sha256")
