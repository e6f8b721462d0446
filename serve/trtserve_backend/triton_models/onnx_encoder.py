"""``<name>_encoder`` on CPU: the exported ONNX graph under ONNX Runtime."""
from __future__ import annotations

import triton_python_backend_utils as pb_utils

from trtserve_backend.model_config import PythonModelConfig
from trtserve_backend.ort_encoder import OrtEncoder
from trtserve_backend.parameters import OrtEncoderParameters
from trtserve_backend.triton_models._common import error_response, input_arrays, version_dir


class TritonPythonModel:
    def initialize(self, args):
        cfg = PythonModelConfig.from_args(args)
        params = OrtEncoderParameters.from_config(cfg)
        self.input_names = [t.name for t in cfg.inputs]
        self.output = cfg.single_output()
        self.encoder = OrtEncoder.from_parameters(params, version_dir(args), self.input_names, self.output.name)

    def execute(self, requests):
        try:
            feeds = [input_arrays(r, self.input_names) for r in requests]
            outputs = self.encoder.run_requests(feeds)
        except Exception as e:  # noqa: BLE001 - every request gets the error, the model stays up
            return [error_response(f"encoder failed: {e}") for _ in requests]
        return [
            pb_utils.InferenceResponse([pb_utils.Tensor(self.output.name, out.astype(self.output.dtype, copy=False))])
            for out in outputs
        ]
