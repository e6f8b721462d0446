"""``<name>_postprocess``: encoder output -> the ensemble's public outputs, per task.

Classification and embedding: one output row per input row. Question answering and token
classification: the rows are windows; each item's windows are scored together and the
response has one row per item (trtserve_backend.qa / .ner).
"""
from __future__ import annotations

import os

import numpy as np
import triton_python_backend_utils as pb_utils

from trtserve_backend import contract
from trtserve_backend.model_config import PythonModelConfig
from trtserve_backend.postprocess import Classifier, l2_normalize
from trtserve_backend.triton_models._common import error_response, input_arrays, version_dir


#: The ensemble outputs each task's postprocess writes (initialize checks the config has them).
OUTPUTS = {
    contract.CLASSIFICATION: (contract.LABEL, contract.SCORE, contract.PROBABILITIES),
    contract.EMBEDDING_TASK: (contract.EMBEDDING,),
    contract.QUESTION_ANSWERING: (contract.ANSWER, contract.SCORE, contract.START, contract.END),
    contract.TOKEN_CLASSIFICATION: (contract.ENTITIES,),
}


def _strings(values) -> np.ndarray:
    out = np.empty((len(values), 1), dtype=np.object_)
    for i, v in enumerate(values):
        out[i, 0] = v.encode("utf-8")
    return out


class TritonPythonModel:
    def initialize(self, args):
        cfg = PythonModelConfig.from_args(args)
        self.dtypes = {t.name: t.dtype for t in cfg.outputs}
        self.input_names = [t.name for t in cfg.inputs]
        self.task = cfg.parameter("task")
        if self.task == contract.CLASSIFICATION:
            self.classify = Classifier(cfg.json_parameter("labels"))
        elif self.task == contract.QUESTION_ANSWERING:
            from trtserve_backend.qa import QASettings

            self.qa = QASettings(
                n_best=int(cfg.parameter("n_best", "1")),
                max_answer_length=int(cfg.parameter("max_answer_length")),
                handle_impossible_answer=bool(cfg.json_parameter("handle_impossible_answer")),
                align_to_words=bool(cfg.json_parameter("align_to_words")) if "align_to_words" in cfg.parameters else True,
            )
        elif self.task == contract.TOKEN_CLASSIFICATION:
            from trtserve_backend.ner import NERSettings, TokenVocabulary

            self.ner = NERSettings(tuple(cfg.json_parameter("labels")), cfg.parameter("aggregation_strategy"))
            self.vocab = TokenVocabulary.from_file(os.path.join(version_dir(args), cfg.parameter("tokenizer_file")))
        elif self.task != contract.EMBEDDING_TASK:
            raise ValueError(f"{cfg.name}: unknown task {self.task!r}")
        for name in OUTPUTS[self.task]:
            cfg.output(name)  # raises ModelConfigError naming what is missing

    def _tensor(self, name, values):
        return pb_utils.Tensor(name, values.astype(self.dtypes[name], copy=False))

    def _respond(self, x):
        if self.task == contract.CLASSIFICATION:
            names, scores, probs = self.classify(x[contract.LOGITS])
            tensors = [pb_utils.Tensor(contract.LABEL, names), self._tensor(contract.SCORE, scores),
                       self._tensor(contract.PROBABILITIES, probs)]
        elif self.task == contract.EMBEDDING_TASK:
            tensors = [self._tensor(contract.EMBEDDING, l2_normalize(x[contract.POOLED]))]
        elif self.task == contract.QUESTION_ANSWERING:
            from trtserve_backend.qa import answer_requests

            answers = answer_requests(x[contract.LOGITS], x[contract.TOKEN_SPANS], x[contract.WINDOW_ITEM],
                                      x[contract.ITEM_TEXT], self.qa)
            tensors = [pb_utils.Tensor(contract.ANSWER, _strings([a.text for a in answers])),
                       self._tensor(contract.SCORE, np.array([[a.score] for a in answers])),
                       self._tensor(contract.START, np.array([[a.start] for a in answers])),
                       self._tensor(contract.END, np.array([[a.end] for a in answers]))]
        else:
            from trtserve_backend.ner import entities_requests, to_json

            per_item = entities_requests(x[contract.LOGITS], x[contract.INPUT_IDS], x[contract.TOKEN_SPANS],
                                         x[contract.WINDOW_ITEM], x[contract.ITEM_TEXT], self.ner, self.vocab)
            tensors = [pb_utils.Tensor(contract.ENTITIES, _strings([to_json(e) for e in per_item]))]
        return pb_utils.InferenceResponse(tensors)

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                responses.append(self._respond(input_arrays(request, self.input_names)))
            except Exception as e:  # noqa: BLE001 - one bad request must not fail the others
                responses.append(error_response(f"postprocess failed: {e}"))
        return responses
