"""A stand-in for Triton's ``triton_python_backend_utils``, so the Python-backend models under
``trtserve_backend.triton_models`` run in unit tests without Triton. Only what those models call."""
from __future__ import annotations

import sys
import types


class Tensor:
    def __init__(self, name, array):
        self._name, self._array = name, array

    def name(self):
        return self._name

    def as_numpy(self):
        return self._array

    def is_cpu(self):
        return True


class Request:
    def __init__(self, tensors):
        self._tensors = list(tensors)

    def inputs(self):
        return self._tensors


class InferenceResponse:
    def __init__(self, output_tensors=None, error=None):
        self.output_tensors, self.error = output_tensors or [], error


class TritonError:
    def __init__(self, message, code=None):
        self.message = message


class Logger:
    """Records what the models log: ``(level, message)`` in ``messages`` (one list per install)."""

    messages: list = []

    @classmethod
    def log_info(cls, message):
        cls.messages.append(("info", message))

    @classmethod
    def log_warn(cls, message):
        cls.messages.append(("warn", message))

    @classmethod
    def log_error(cls, message):
        cls.messages.append(("error", message))


def get_input_tensor_by_name(request, name):
    return next((t for t in request.inputs() if t.name() == name), None)


def install(monkeypatch, *model_modules: str) -> types.ModuleType:
    """Put the stand-in in ``sys.modules`` and drop ``model_modules`` (and ``_common``) so their next
    import binds to it."""
    module = types.ModuleType("triton_python_backend_utils")
    module.Tensor, module.InferenceResponse, module.TritonError = Tensor, InferenceResponse, TritonError
    module.get_input_tensor_by_name = get_input_tensor_by_name
    module.Logger = type("Logger", (Logger,), {"messages": []})
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", module)
    for name in (*model_modules, "trtserve_backend.triton_models._common"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    return module
