"""``<name>_tokenizer``: text inputs [batch,1] BYTES -> encoder inputs padded to a length bucket.

Classification and embedding: one row per text. Question answering and token classification
(``task`` parameter): one row per window of each item, plus the tensors the postprocess uses
to score and regroup the windows (trtserve_backend.windows).
"""
from __future__ import annotations

import os

import triton_python_backend_utils as pb_utils

from trtserve_backend import contract
from trtserve_backend.model_config import PythonModelConfig
from trtserve_backend.tokenize import BucketTokenizer, InvalidTextError, decode_texts
from trtserve_backend.triton_models._common import error_response, input_arrays, version_dir
from trtserve_backend.windows import WindowSettings, WindowTokenizer


class TritonPythonModel:
    def initialize(self, args):
        cfg = PythonModelConfig.from_args(args)
        self.input_names = [t.name for t in cfg.inputs]
        self.outputs = cfg.outputs
        self.task = cfg.parameter("task", contract.CLASSIFICATION)
        path = os.path.join(version_dir(args), cfg.parameter("tokenizer_file"))
        max_length = int(cfg.parameter("max_sequence_length"))
        buckets = cfg.json_parameter("length_buckets")
        pad_token_id = int(cfg.parameter("pad_token_id"))
        if self.task in contract.WINDOWED_TASKS:
            self.tokenizer = WindowTokenizer.from_file(path, self.task, WindowSettings(
                max_length=max_length, stride=int(cfg.parameter("stride")), buckets=tuple(buckets),
                pad_token_id=pad_token_id, max_windows=int(cfg.parameter("max_windows")),
                max_question_length=int(cfg.parameter("max_question_length", "64")),
                align_to_words=bool(cfg.json_parameter("align_to_words")) if "align_to_words" in cfg.parameters else True,
            ))
        else:
            self.tokenizer = BucketTokenizer.from_file(path, max_length=max_length, buckets=buckets,
                                                       pad_token_id=pad_token_id,
                                                       output_names=[t.name for t in cfg.outputs])

    def _items(self, request):
        arrays = input_arrays(request, self.input_names)
        columns = [decode_texts(arrays[name], name) for name in self.input_names]
        return columns[0] if len(columns) == 1 else list(zip(*columns))

    def execute(self, requests):
        items, errors = [], {}
        for i, request in enumerate(requests):
            try:
                items.append(self._items(request))
            except (InvalidTextError, KeyError) as e:
                errors[i] = str(e)
                items.append([])
        encoded = self.tokenizer.encode_requests(items)
        responses = []
        for i, arrays in enumerate(encoded):
            if isinstance(arrays, Exception) or i in errors:
                responses.append(error_response(errors.get(i) or str(arrays), invalid_argument=True))
                continue
            responses.append(pb_utils.InferenceResponse(
                [pb_utils.Tensor(t.name, arrays[t.name].astype(t.dtype, copy=False)) for t in self.outputs]
            ))
        return responses
