"""``<name>_postprocess``: encoder output -> the ensemble's public outputs, per task."""
from __future__ import annotations

import triton_python_backend_utils as pb_utils

from trtserve_backend.model_config import PythonModelConfig
from trtserve_backend.parameters import PostprocessParameters
from trtserve_backend.postprocess import make_postprocess
from trtserve_backend.triton_models._common import error_response, input_array, output_tensors


class TritonPythonModel:
    def initialize(self, args):
        cfg = PythonModelConfig.from_args(args)
        params = PostprocessParameters.from_config(cfg)
        self.input_name = cfg.single_input().name
        self.postprocess = make_postprocess(params.task, params.labels)
        self.outputs = cfg.outputs

    def _respond(self, values):
        return pb_utils.InferenceResponse(output_tensors(self.outputs, self.postprocess(values)))

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                responses.append(self._respond(input_array(request, self.input_name)))
            except Exception as e:  # noqa: BLE001 - one bad request must not fail the others
                responses.append(error_response(f"postprocess failed: {e}"))
        return responses
