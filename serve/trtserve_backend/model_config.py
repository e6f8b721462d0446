"""Read names and settings from the model config dict Triton hands to a Python model.

``args["model_config"]`` is the JSON form of the model's config.pbtxt. These helpers keep
every Python model reading its tensor names, dtypes and parameters from there, so the
generated config stays the single source of truth at run time.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

#: Triton TYPE_* names (as they appear in the JSON model config) -> numpy dtypes.
_NUMPY_DTYPES = {
    "TYPE_BOOL": np.bool_,
    "TYPE_INT8": np.int8,
    "TYPE_INT16": np.int16,
    "TYPE_INT32": np.int32,
    "TYPE_INT64": np.int64,
    "TYPE_UINT8": np.uint8,
    "TYPE_FP16": np.float16,
    "TYPE_FP32": np.float32,
    "TYPE_FP64": np.float64,
    "TYPE_STRING": np.object_,
}


class ModelConfigError(ValueError):
    """The model config lacks something this Python model needs."""


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: Any  # numpy dtype
    dims: tuple[int, ...]


@dataclass(frozen=True)
class PythonModelConfig:
    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    parameters: dict[str, str]
    max_batch_size: int

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> "PythonModelConfig":
        return cls.from_dict(json.loads(args["model_config"]))

    @classmethod
    def from_dict(cls, config: dict[str, Any]) -> "PythonModelConfig":
        def tensors(key: str) -> tuple[TensorSpec, ...]:
            out = []
            for t in config.get(key, []):
                dtype = t["data_type"]
                if dtype not in _NUMPY_DTYPES:
                    raise ModelConfigError(f"{config.get('name')}: unsupported data_type {dtype} for {t['name']}")
                out.append(TensorSpec(t["name"], _NUMPY_DTYPES[dtype], tuple(int(d) for d in t.get("dims", []))))
            return tuple(out)

        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        return cls(
            name=config.get("name", "?"),
            inputs=tensors("input"),
            outputs=tensors("output"),
            parameters=params,
            max_batch_size=int(config.get("max_batch_size", 0)),
        )

    def parameter(self, key: str, default: str | None = None) -> str:
        if key in self.parameters:
            return self.parameters[key]
        if default is None:
            raise ModelConfigError(f"{self.name}: config.pbtxt lacks parameter '{key}'")
        return default

    def json_parameter(self, key: str) -> Any:
        raw = self.parameter(key)
        try:
            return json.loads(raw)
        except json.JSONDecodeError as e:
            raise ModelConfigError(f"{self.name}: parameter '{key}' is not JSON: {raw!r}") from e

    def output(self, name: str) -> TensorSpec:
        for t in self.outputs:
            if t.name == name:
                return t
        raise ModelConfigError(f"{self.name}: config.pbtxt has no output '{name}' (has {[t.name for t in self.outputs]})")

    def single_output(self) -> TensorSpec:
        if len(self.outputs) != 1:
            raise ModelConfigError(f"{self.name}: expected exactly one output, config has {[t.name for t in self.outputs]}")
        return self.outputs[0]

    def single_input(self) -> TensorSpec:
        if len(self.inputs) != 1:
            raise ModelConfigError(f"{self.name}: expected exactly one input, config has {[t.name for t in self.inputs]}")
        return self.inputs[0]
