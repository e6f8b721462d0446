"""``<name>_tokenizer``: text inputs [batch,1] BYTES -> encoder inputs padded to a length bucket.

Classification and embedding: one row per text. Question answering and token classification
(the ``task`` parameter): one row per window of each item, plus the tensors the postprocess uses
to score and regroup the windows (trtserve_backend.windows).
"""
from __future__ import annotations

import os

import triton_python_backend_utils as pb_utils
import trtserve_contract as contract

from trtserve_backend.limits import RequestLimits
from trtserve_backend.model_config import PythonModelConfig
from trtserve_backend.parameters import TokenizerParameters
from trtserve_backend.tokenize import BucketTokenizer, InvalidTextError, decode_texts
from trtserve_backend.triton_models._common import error_response, input_arrays, version_dir
from trtserve_backend.windows import WindowSettings, WindowTokenizer


class TritonPythonModel:
    def initialize(self, args):
        cfg = PythonModelConfig.from_args(args)
        params = TokenizerParameters.from_config(cfg)
        self.input_names = [t.name for t in cfg.inputs]
        self.outputs = cfg.outputs
        path = os.path.join(version_dir(args), params.tokenizer_file)
        if params.task in contract.WINDOWED_TASKS:
            self.tokenizer = WindowTokenizer.from_file(path, params.task, WindowSettings(
                max_length=params.max_sequence_length, stride=params.stride, buckets=params.length_buckets,
                pad_token_id=params.pad_token_id, max_windows=params.max_windows,
                max_question_length=params.max_question_length, align_to_words=params.align_to_words))
        else:
            self.tokenizer = BucketTokenizer.from_file(path, max_length=params.max_sequence_length,
                                                       buckets=params.length_buckets, pad_token_id=params.pad_token_id,
                                                       output_names=[t.name for t in cfg.outputs])
        self.limits = RequestLimits(params.max_request_text_bytes, params.max_request_texts)

    def _items(self, request):
        """One request's texts (one input) or (question, context) pairs (two inputs); the input
        limits are checked on the raw tensors, before any decoding or tokenizing."""
        arrays = input_arrays(request, self.input_names)
        self.limits.check_inputs(arrays)
        columns = [decode_texts(arrays[name], name) for name in self.input_names]
        if len({len(c) for c in columns}) > 1:
            counts = ", ".join(f"{name}: {len(c)}" for name, c in zip(self.input_names, columns))
            raise InvalidTextError(f"inputs of different lengths ({counts}); send one of each per item")
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
            if i in errors or isinstance(arrays, Exception):
                responses.append(error_response(errors.get(i) or str(arrays), invalid_argument=True))
                continue
            responses.append(pb_utils.InferenceResponse(
                [pb_utils.Tensor(t.name, arrays[t.name].astype(t.dtype, copy=False)) for t in self.outputs]
            ))
        return responses
