"""config.pbtxt as Triton's ``ModelConfig`` protobuf: written with ``text_format`` and parsed
back (protobuf rejects unknown fields), never templated."""
from __future__ import annotations

from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from .files import write_text_atomic


def tensor_config(cls, decl, optional: bool = False):
    """A ``ModelInput``/``ModelOutput`` (``cls``) from a :class:`~trtserve_build.core.tasks.TensorDecl`."""
    tensor = cls(name=decl.name, data_type=mc.DataType.Value(decl.dtype), dims=list(decl.dims))
    if optional:
        tensor.optional = True
    return tensor


def to_text(config: mc.ModelConfig) -> str:
    return text_format.MessageToString(config)


def write_config(config: mc.ModelConfig, path: Path) -> None:
    write_text_atomic(Path(path), to_text(config))


def read_config(path: Path) -> mc.ModelConfig:
    """Parse a config.pbtxt; unknown fields raise ``text_format.ParseError``."""
    return text_format.Parse(Path(path).read_text(), mc.ModelConfig())
