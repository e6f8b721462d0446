"""What a precision transformation did; written next to the transformed graph."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field


@dataclass
class TransformReport:
    """What a transformation did; written next to the transformed graph as ``<precision>.json``."""

    precision: str
    policy: dict
    opset: int
    nodes: int
    fp16_nodes: int
    fp32_nodes: int
    fp32_ops: dict[str, int]
    casts_inserted: int
    constants_fp16: int
    constants_duplicated: int
    clamped_values: int
    underflowed_values: int
    quantized_matmuls: int = 0
    unquantized_matmuls: list[str] = field(default_factory=list)
    calibration: dict | None = None
    source_sha256: str = ""
    onnx_sha256: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

