"""The serving floor: a generated deployment whose models do no work.

Copies the generated configs of a deployment (same tensors, batching, queue policy, instances)
into a scratch repository and gives each Python model a `model.py` that answers at once with
outputs of the right names, types and shapes: no tokenization, no engine, no softmax. Its
latency is what Triton, the topology's Python-backend hops and gRPC cost on the machine before
any model work; `make bench` and `make gpu-bench` print it beside the real one.

Both topologies: an ensemble (tokenizer -> encoder -> postprocess: three hops) or one Python
model (one hop). ``encoder_hop=False`` drops nothing but marks the encoder step as the one a C++
backend would run (the TensorRT `gpu` variant): it stays a do-nothing Python step here, so that
floor is an upper bound for two Python hops plus one C++ hop.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from trtserve_build.core.pbtxt import read_config

#: One model.py for every step: each output shaped [rows, *dims] from the config, filled with
#: a constant (strings: the first label-like value), computed from nothing.
_DO_NOTHING = '''
import json

import numpy as np
import triton_python_backend_utils as pb_utils

WIDTH = 16  # variable token dimension: one length bucket
DTYPES = {"TYPE_STRING": np.object_, "TYPE_FP32": np.float32, "TYPE_FP16": np.float16, "TYPE_INT64": np.int64,
          "TYPE_INT32": np.int32}


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.outputs = []
        for out in config["output"]:
            dims = [WIDTH if int(d) < 0 else int(d) for d in out.get("dims", [])]
            dtype = DTYPES[out["data_type"]]
            fill = b"positive" if dtype is np.object_ else 0.5
            self.outputs.append((out["name"], dims, dtype, fill))

    def execute(self, requests):
        responses = []
        for request in requests:
            n = request.inputs()[0].as_numpy().shape[0]
            responses.append(pb_utils.InferenceResponse([
                pb_utils.Tensor(name, np.full([n, *dims], fill, dtype=dtype)) for name, dims, dtype, fill in self.outputs]))
        return responses
'''


def write_floor_repository(source: Path, out: Path, deployments: tuple[str, ...] | str = ("sentiment",)) -> Path:
    """A repository (``out``, replaced) holding ``deployments`` from ``source`` with do-nothing models."""
    source, out = Path(source), Path(out)
    shutil.rmtree(out, ignore_errors=True)
    for deployment in [deployments] if isinstance(deployments, str) else deployments:
        config = read_config(source / deployment / "config.pbtxt")
        for model in [deployment, *(step.model_name for step in config.ensemble_scheduling.step)]:
            (out / model / "1").mkdir(parents=True)
            shutil.copy2(source / model / "config.pbtxt", out / model / "config.pbtxt")
            if model != deployment or config.platform != "ensemble":
                (out / model / "1" / "model.py").write_text(_DO_NOTHING.lstrip())
    return out
