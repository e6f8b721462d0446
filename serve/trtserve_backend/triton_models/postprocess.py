"""``<name>_postprocess``: encoder output -> the ensemble's public outputs, per task."""
from __future__ import annotations

import triton_python_backend_utils as pb_utils

from trtserve_backend import contract
from trtserve_backend.model_config import PythonModelConfig
from trtserve_backend.postprocess import Classifier, l2_normalize
from trtserve_backend.triton_models._common import error_response, input_array


class TritonPythonModel:
    def initialize(self, args):
        cfg = PythonModelConfig.from_args(args)
        self.input_name = cfg.single_input().name
        self.task = cfg.parameter("task")
        if self.task == contract.CLASSIFICATION:
            self.classify = Classifier(cfg.json_parameter("labels"))
            self.out_label = cfg.output(contract.LABEL)
            self.out_score = cfg.output(contract.SCORE)
            self.out_probs = cfg.output(contract.PROBABILITIES)
        elif self.task == contract.EMBEDDING_TASK:
            self.out_embedding = cfg.output(contract.EMBEDDING)
        else:
            raise ValueError(f"{cfg.name}: unknown task {self.task!r}")

    def _respond(self, values):
        if self.task == contract.CLASSIFICATION:
            names, scores, probs = self.classify(values)
            tensors = [
                pb_utils.Tensor(self.out_label.name, names),
                pb_utils.Tensor(self.out_score.name, scores.astype(self.out_score.dtype, copy=False)),
                pb_utils.Tensor(self.out_probs.name, probs.astype(self.out_probs.dtype, copy=False)),
            ]
        else:
            tensors = [pb_utils.Tensor(self.out_embedding.name,
                                       l2_normalize(values).astype(self.out_embedding.dtype, copy=False))]
        return pb_utils.InferenceResponse(tensors)

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                responses.append(self._respond(input_array(request, self.input_name)))
            except Exception as e:  # noqa: BLE001 - one bad request must not fail the others
                responses.append(error_response(f"postprocess failed: {e}"))
        return responses
