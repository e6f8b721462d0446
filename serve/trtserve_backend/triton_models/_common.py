"""Shared helpers for the Triton Python models (imported only inside the Python backend)."""
from __future__ import annotations

import os

import triton_python_backend_utils as pb_utils


def version_dir(args) -> str:
    """The model version folder, where generation put the model's files."""
    return os.path.join(args["model_repository"], args["model_version"])


def error_response(message: str, invalid_argument: bool = False):
    """An InferenceResponse carrying only an error (INVALID_ARG where the backend supports codes)."""
    if invalid_argument and hasattr(pb_utils.TritonError, "INVALID_ARG"):
        return pb_utils.InferenceResponse(error=pb_utils.TritonError(message, pb_utils.TritonError.INVALID_ARG))
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(message))


def input_array(request, name: str):
    return input_arrays(request, (name,))[name]


def input_arrays(request, names) -> dict:
    """{name: array} for ``names``, reading the request's inputs once (not once per name)."""
    tensors = {t.name(): t for t in request.inputs()}
    missing = [n for n in names if n not in tensors]
    if missing:
        raise KeyError(f"request lacks input '{missing[0]}'")
    return {n: tensors[n].as_numpy() for n in names}
