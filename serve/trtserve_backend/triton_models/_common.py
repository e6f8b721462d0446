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


def read_items(requests, input_names, limits=None) -> tuple[list[list], dict[int, str]]:
    """Each request's items (empty for a bad request) and {request index: error message}: its
    texts (one input, TEXT) or (question, context) pairs (two inputs, QUESTION and CONTEXT).

    ``limits`` (a :class:`~trtserve_backend.limits.RequestLimits`) is checked on the raw tensors,
    before anything is decoded or tokenized."""
    from trtserve_backend.tokenize import InvalidTextError, decode_texts

    items, errors = [], {}
    for i, request in enumerate(requests):
        try:
            arrays = input_arrays(request, input_names)
            if limits is not None:
                limits.check_inputs(arrays)
            columns = [decode_texts(arrays[name], name) for name in input_names]
            if len({len(c) for c in columns}) > 1:
                counts = ", ".join(f"{name}: {len(c)}" for name, c in zip(input_names, columns))
                raise InvalidTextError(f"inputs of different lengths ({counts}); send one of each per item")
            items.append(columns[0] if len(columns) == 1 else list(zip(*columns)))
        except (InvalidTextError, KeyError) as e:
            errors[i] = str(e)
            items.append([])
    return items, errors
