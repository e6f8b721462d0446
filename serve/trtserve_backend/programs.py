"""Loading an engine's programs: a TorchScript file (``.pt``, traced by trtserve_build's
torchscript or compiled stage, with its build metadata inside) or an AOTInductor package (``.pt2``).

``torch`` is imported only inside the functions, so the modules that import these names load
anywhere (the planning helpers of :mod:`.torch_engine`, the build's stages).
"""
from __future__ import annotations

import json

#: Name of the JSON metadata file stored inside the TorchScript archive (``_extra_files``).
METADATA_FILE = "trtserve.json"


def load_traced(path) -> tuple[object, dict]:
    """A TorchScript file loaded into host memory and its build metadata ({} if none), the engine's
    own operators registered first (a fused trace calls ``trtserve::add_layer_norm``, :mod:`.kernels`)."""
    import torch

    from . import kernels  # noqa: F401 - registers the operators

    extra = {METADATA_FILE: ""}
    module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    return module, json.loads(extra[METADATA_FILE]) if extra[METADATA_FILE] else {}


def read_metadata(path: str) -> dict:
    """The build metadata stored inside a TorchScript file by trtserve_build's stages."""
    return load_traced(path)[1]


def load_program(path, device):
    """A second program of a fused-encoder engine (its full-rows twin): TorchScript (``.pt``) or an
    AOTInductor package (``.pt2``), on ``device``."""
    if str(path).endswith(".pt2"):
        return load_package(path, device)
    return load_traced(path)[0].to(device).eval()


def load_package(path: str, device):
    """An AOTInductor package (the fused encoder, trtserve_build.stages.compiled) as a callable on
    ``device``; a single-threaded runner on CUDA, which CUDA graph capture needs."""
    import torch

    dev = torch.device(device)
    cuda = dev.type == "cuda"
    index = (dev.index if dev.index is not None else torch.cuda.current_device()) if cuda else -1
    return torch._inductor.aoti_load_package(str(path), run_single_threaded=cuda, device_index=index)
