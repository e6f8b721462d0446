"""``<name>_postprocess``: encoder output -> the ensemble's public outputs, per task.

Classification and embedding: one output row per input row. Question answering and token
classification: the rows are windows; each item's windows are scored together and the
response has one row per item (trtserve_backend.qa / .ner).
"""
from __future__ import annotations

import os

import triton_python_backend_utils as pb_utils
import trtserve_contract as contract

from trtserve_backend.model_config import PythonModelConfig
from trtserve_backend.parameters import PostprocessParameters
from trtserve_backend.postprocess import make_postprocess
from trtserve_backend.triton_models._common import error_response, input_array, input_arrays, version_dir


def make_windowed_postprocess(params: PostprocessParameters, folder: str):
    """{input name: array} of one request's window rows -> {output name: [n, ...] array}."""
    if params.task == contract.QUESTION_ANSWERING:
        from trtserve_backend.qa import QAPostprocess, QASettings

        return QAPostprocess(QASettings(n_best=params.n_best, max_answer_length=params.max_answer_length,
                                        handle_impossible_answer=params.handle_impossible_answer,
                                        align_to_words=params.align_to_words))
    from trtserve_backend.ner import NERPostprocess, NERSettings, TokenVocabulary

    return NERPostprocess(NERSettings(params.labels, params.aggregation_strategy),
                          TokenVocabulary.from_file(os.path.join(folder, params.tokenizer_file)))


class TritonPythonModel:
    def initialize(self, args):
        cfg = PythonModelConfig.from_args(args)
        params = PostprocessParameters.from_config(cfg)
        self.windowed = params.task in contract.WINDOWED_TASKS
        if self.windowed:
            self.input_names = [t.name for t in cfg.inputs]
            self.postprocess = make_windowed_postprocess(params, version_dir(args))
        else:
            self.input_name = cfg.single_input().name
            self.postprocess = make_postprocess(params.task, params.labels)
        self.outputs = cfg.outputs

    def _respond(self, request):
        if self.windowed:
            arrays = self.postprocess(input_arrays(request, self.input_names))
        else:
            arrays = self.postprocess(input_array(request, self.input_name))
        return pb_utils.InferenceResponse([
            pb_utils.Tensor(t.name, arrays[t.name].astype(t.dtype, copy=False))
            for t in self.outputs
        ])

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                responses.append(self._respond(request))
            except Exception as e:  # noqa: BLE001 - one bad request must not fail the others
                responses.append(error_response(f"postprocess failed: {e}"))
        return responses
