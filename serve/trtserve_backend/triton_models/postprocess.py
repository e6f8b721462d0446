"""``<name>_postprocess``: encoder output -> the ensemble's public outputs, per task.

Classification and embedding: one output row per input row. Question answering and token
classification: the rows are windows; each item's windows are scored together and the
response has one row per item (trtserve_backend.qa / .ner). The postprocess is the one the
one-model deployment runs too (trtserve_backend.steps.make_step_postprocess).
"""
from __future__ import annotations

import triton_python_backend_utils as pb_utils

from trtserve_backend.model_config import PythonModelConfig
from trtserve_backend.parameters import PostprocessParameters
from trtserve_backend.steps import make_step_postprocess, windowed
from trtserve_backend.triton_models._common import (OutputTensors, error_response, fixed_output_values, input_array,
                                                    input_arrays, version_dir)


class TritonPythonModel:
    def initialize(self, args):
        cfg = PythonModelConfig.from_args(args)
        params = PostprocessParameters.from_config(cfg)
        self.windowed = windowed(params.task)
        self.input_names = [t.name for t in cfg.inputs]
        if not self.windowed:
            self.input_name = cfg.single_input().name
        self.postprocess = make_step_postprocess(params, version_dir(args))
        self.output_tensors = OutputTensors(cfg.outputs, fixed_output_values(self.postprocess))

    def _respond(self, request):
        if self.windowed:
            values = self.postprocess(input_arrays(request, self.input_names))
        else:
            values = self.postprocess(input_array(request, self.input_name))
        return pb_utils.InferenceResponse(self.output_tensors(values))

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                responses.append(self._respond(request))
            except Exception as e:  # noqa: BLE001 - one bad request must not fail the others
                responses.append(error_response(f"postprocess failed: {e}"))
        return responses
