"""The serving floor: the generated `sentiment` ensemble with models that do no work.

Copies the generated configs of `sentiment` and its three steps (same tensors, batching, queue
policy, instances) into a scratch repository and gives each step a `model.py` that answers at
once with outputs of the right names, types and shapes: no tokenization, no encoder, no
softmax. Its latency at concurrency 1 is what Triton's ensemble, three Python-backend hops and
gRPC cost on the machine before any model work; `make bench` prints it beside the real one.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from trtserve_build.core.pbtxt import read_config

#: Each step's model.py: outputs shaped like the real ones, computed from nothing.
_MODELS = {
    "tokenizer": '''
import numpy as np
import triton_python_backend_utils as pb_utils

WIDTH = 16  # one length bucket


class TritonPythonModel:
    def initialize(self, args):
        import json
        self.outputs = [o["name"] for o in json.loads(args["model_config"])["output"]]

    def execute(self, requests):
        responses = []
        for request in requests:
            n = request.inputs()[0].as_numpy().shape[0]
            tokens = np.ones((n, WIDTH), dtype=np.int64)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor(name, tokens) for name in self.outputs]))
        return responses
''',
    "encoder": '''
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        import json
        out = json.loads(args["model_config"])["output"][0]
        self.name, self.width = out["name"], int(out["dims"][0])

    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor(
                    self.name, np.zeros((r.inputs()[0].as_numpy().shape[0], self.width), dtype=np.float32))])
                for r in requests]
''',
    "postprocess": '''
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            n = request.inputs()[0].as_numpy().shape[0]
            responses.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("LABEL", np.array([[b"positive"]] * n, dtype=np.object_)),
                pb_utils.Tensor("SCORE", np.full((n, 1), 0.5, dtype=np.float32)),
                pb_utils.Tensor("PROBABILITIES", np.full((n, 2), 0.5, dtype=np.float32)),
            ]))
        return responses
''',
}


def write_floor_repository(source: Path, out: Path, ensemble: str = "sentiment") -> Path:
    """A repository holding ``ensemble`` from ``source`` with do-nothing steps; returns ``out``."""
    source, out = Path(source), Path(out)
    config = read_config(source / ensemble / "config.pbtxt")
    steps = {step.model_name: step for step in config.ensemble_scheduling.step}
    if out.exists():
        shutil.rmtree(out)
    (out / ensemble / "1").mkdir(parents=True)
    shutil.copy2(source / ensemble / "config.pbtxt", out / ensemble / "config.pbtxt")
    for model in steps:
        role = model.rsplit("_", 1)[-1]
        if role not in _MODELS:
            raise ValueError(f"{model}: no do-nothing model for step role {role!r}")
        (out / model / "1").mkdir(parents=True)
        shutil.copy2(source / model / "config.pbtxt", out / model / "config.pbtxt")
        (out / model / "1" / "model.py").write_text(_MODELS[role].lstrip())
    return out
