"""``<name>_postprocess``: encoder output -> the ensemble's public outputs, per task."""
from __future__ import annotations

import triton_python_backend_utils as pb_utils

from trtserve_backend.model_config import PythonModelConfig
from trtserve_backend.postprocess import task_outputs
from trtserve_backend.triton_models._common import error_response, input_array, output_tensors


class TritonPythonModel:
    def initialize(self, args):
        cfg = PythonModelConfig.from_args(args)
        self.input_name = cfg.single_input().name
        self.outputs = cfg.outputs
        self.postprocess = task_outputs(cfg.parameter("task"), cfg.parameter)

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                values = self.postprocess(input_array(request, self.input_name))
                responses.append(pb_utils.InferenceResponse(output_tensors(self.outputs, values)))
            except Exception as e:  # noqa: BLE001 - one bad request must not fail the others
                responses.append(error_response(f"postprocess failed: {e}"))
        return responses
