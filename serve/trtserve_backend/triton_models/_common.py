"""Shared helpers for the Triton Python models (imported only inside the Python backend)."""
from __future__ import annotations

import os
from typing import Iterable, Mapping, Sequence

import numpy as np
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
    try:
        return {n: tensors[n].as_numpy() for n in names}
    except KeyError as e:  # the first of ``names`` the request lacks
        raise KeyError(f"request lacks input '{e.args[0]}'") from None


class OutputTensors:
    """Each response's pb_utils tensors for the config's ``outputs`` from {name: array}, in the
    config's dtypes: ``OutputTensors(outputs, fixed_values)(values)``.

    ``fixed_values`` {output name: the bytes values it can take} (a classifier's labels, from
    :func:`fixed_output_values`): a one-item BYTES output holding one of them is sent as a tensor
    made once per (shape, value) and reused by every later response. Making a BYTES tensor is the
    dearest part of a response in the stub (its serialization runs in Python: ~10 us of a
    classification response's ~30 us, measured under Triton 2.51), and a tensor made once is also
    written to shared memory once. Reuse is safe in the Python backend (r24.10 .. main): a tensor
    is written to shared memory only on its first send (``PbTensor::SaveToSharedMemory`` returns
    when ``tensor_shm_`` is set); the block is reference-counted and freed by the stub only when
    the tensor object dies (``WrapObjectInUniquePtr``), and the stub does not return from an
    execution before the parent has copied every response's outputs (``Stub::ProcessRequests``
    pops the parent's ``execute_finalize`` message last).
    """

    def __init__(self, outputs, fixed_values: Mapping[str, Iterable[bytes]] | None = None):
        self.outputs = tuple((t.name, np.dtype(t.dtype)) for t in outputs)
        fixed_values = fixed_values or {}
        self._allowed = {t.name: frozenset(fixed_values[t.name]) for t in outputs if t.name in fixed_values}
        self._made: dict[tuple, object] = {}

    def __call__(self, values: dict) -> list:
        tensors = []
        for name, dtype in self.outputs:
            value = values[name]
            if name in self._allowed and value.size == 1 and value.dtype == np.object_:
                tensors.append(self._fixed(name, value))
            else:
                tensors.append(pb_utils.Tensor(name, value if value.dtype == dtype else value.astype(dtype)))
        return tensors

    def _fixed(self, name: str, value: np.ndarray):
        item = value.item()
        # exactly bytes: serialize_byte_tensor sends an object item of another type as its str()
        if type(item) is not bytes or item not in self._allowed[name]:
            return pb_utils.Tensor(name, value)
        key = (name, value.shape, item)
        tensor = self._made.get(key)
        if tensor is None:
            tensor = self._made[key] = pb_utils.Tensor(name, np.array(value, dtype=np.object_))
        return tensor


def fixed_output_values(postprocess) -> Mapping[str, Sequence[bytes]]:
    """{output name: the bytes values it can take} of a step postprocess (the classifier's
    labels), for :class:`OutputTensors`; empty for the tasks whose BYTES outputs vary."""
    return getattr(postprocess, "fixed_values", {})


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
            if len(columns) == 1:
                items.append(columns[0])
                continue
            if len({len(c) for c in columns}) > 1:
                counts = ", ".join(f"{name}: {len(c)}" for name, c in zip(input_names, columns))
                raise InvalidTextError(f"inputs of different lengths ({counts}); send one of each per item")
            items.append(list(zip(*columns)))
        except (InvalidTextError, KeyError) as e:
            errors[i] = str(e)
            items.append([])
    return items, errors
