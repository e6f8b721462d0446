"""``<name>_postprocess``: encoder output -> the ensemble's public outputs, per task.

Classification and embedding: one output row per input row. Question answering and token
classification: the rows are windows; each item's windows are scored together and the
response has one row per item (trtserve_backend.qa / .ner).
"""
from __future__ import annotations

import os

import triton_python_backend_utils as pb_utils

from trtserve_backend import contract
from trtserve_backend.model_config import PythonModelConfig
from trtserve_backend.postprocess import Classifier, l2_normalize
from trtserve_backend.triton_models._common import error_response, input_arrays, version_dir


def make_windowed_postprocess(cfg: PythonModelConfig, folder: str):
    """{input name: array} of one request's window rows -> {output name: [n, 1] array}."""
    task = cfg.parameter("task")
    if task == contract.QUESTION_ANSWERING:
        from trtserve_backend.qa import QAPostprocess, QASettings

        return QAPostprocess(QASettings(
            n_best=int(cfg.parameter("n_best", "1")),
            max_answer_length=int(cfg.parameter("max_answer_length")),
            handle_impossible_answer=bool(cfg.json_parameter("handle_impossible_answer")),
            align_to_words=bool(cfg.json_parameter("align_to_words")) if "align_to_words" in cfg.parameters else True,
        ))
    from trtserve_backend.ner import NERPostprocess, NERSettings, TokenVocabulary

    return NERPostprocess(NERSettings(tuple(cfg.json_parameter("labels")), cfg.parameter("aggregation_strategy")),
                          TokenVocabulary.from_file(os.path.join(folder, cfg.parameter("tokenizer_file"))))


class TritonPythonModel:
    def initialize(self, args):
        cfg = PythonModelConfig.from_args(args)
        self.input_names = [t.name for t in cfg.inputs]
        self.outputs = cfg.outputs
        self.task = cfg.parameter("task")
        if self.task in contract.WINDOWED_TASKS:
            self.windowed = make_windowed_postprocess(cfg, version_dir(args))
        elif self.task == contract.CLASSIFICATION:
            self.classify = Classifier(cfg.json_parameter("labels"))
        elif self.task != contract.EMBEDDING_TASK:
            raise ValueError(f"{cfg.name}: unknown task {self.task!r}")

    def _arrays(self, x):
        if self.task == contract.CLASSIFICATION:
            names, scores, probs = self.classify(x[contract.LOGITS])
            return {contract.LABEL: names, contract.SCORE: scores, contract.PROBABILITIES: probs}
        if self.task == contract.EMBEDDING_TASK:
            return {contract.EMBEDDING: l2_normalize(x[contract.POOLED])}
        return self.windowed(x)

    def _respond(self, x):
        arrays = self._arrays(x)
        return pb_utils.InferenceResponse([
            pb_utils.Tensor(t.name, arrays[t.name].astype(t.dtype, copy=False)) for t in self.outputs])

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                responses.append(self._respond(input_arrays(request, self.input_names)))
            except Exception as e:  # noqa: BLE001 - one bad request must not fail the others
                responses.append(error_response(f"postprocess failed: {e}"))
        return responses
