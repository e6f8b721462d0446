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


def output_tensors(outputs, values: dict) -> list:
    """pb_utils tensors for the config's ``outputs`` from {name: array}, in the config's dtypes."""
    return [pb_utils.Tensor(t.name, values[t.name].astype(t.dtype, copy=False)) for t in outputs]


def instance_device(args) -> str:
    """``cuda:N`` for a KIND_GPU instance (made current), else ``cpu``."""
    if args.get("model_instance_kind") == "GPU":
        import torch

        device = f"cuda:{args['model_instance_device_id']}"
        torch.cuda.set_device(device)
        return device
    return "cpu"


def read_texts(requests, input_name: str, limits=None) -> tuple[list[list[str]], dict[int, str]]:
    """Each request's texts (empty for a bad request) and {request index: error message}.

    ``limits`` (a :class:`~trtserve_backend.limits.RequestLimits`) is checked on the raw tensor,
    before anything is decoded or tokenized."""
    from trtserve_backend.tokenize import InvalidTextError, decode_texts

    texts, errors = [], {}
    for i, request in enumerate(requests):
        try:
            tensor = input_array(request, input_name)
            if limits is not None:
                limits.check(tensor, input_name)
            texts.append(decode_texts(tensor, input_name))
        except (InvalidTextError, KeyError) as e:
            errors[i] = str(e)
            texts.append([])
    return texts, errors
