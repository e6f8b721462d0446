"""``<name>_tokenizer``: TEXT [batch,1] BYTES -> encoder inputs padded to a length bucket."""
from __future__ import annotations

import os

import triton_python_backend_utils as pb_utils

from trtserve_backend.limits import RequestLimits
from trtserve_backend.model_config import PythonModelConfig
from trtserve_backend.parameters import TokenizerParameters
from trtserve_backend.tokenize import BucketTokenizer, InvalidTextError, decode_texts
from trtserve_backend.triton_models._common import error_response, input_array, version_dir


class TritonPythonModel:
    def initialize(self, args):
        cfg = PythonModelConfig.from_args(args)
        params = TokenizerParameters.from_config(cfg)
        self.input_name = cfg.single_input().name
        self.outputs = cfg.outputs
        self.tokenizer = BucketTokenizer.from_file(
            os.path.join(version_dir(args), params.tokenizer_file),
            max_length=params.max_sequence_length,
            buckets=params.length_buckets,
            pad_token_id=params.pad_token_id,
            output_names=[t.name for t in cfg.outputs],
        )
        self.limits = RequestLimits(params.max_request_text_bytes, params.max_request_texts)

    def execute(self, requests):
        texts, errors = [], {}
        for i, request in enumerate(requests):
            try:
                tensor = input_array(request, self.input_name)
                self.limits.check(tensor, self.input_name)  # before decoding or tokenizing
                texts.append(decode_texts(tensor, self.input_name))
            except (InvalidTextError, KeyError) as e:
                errors[i] = str(e)
                texts.append([])
        encoded = self.tokenizer.encode_requests(texts)
        responses = []
        for i, arrays in enumerate(encoded):
            if i in errors:
                responses.append(error_response(errors[i], invalid_argument=True))
                continue
            responses.append(pb_utils.InferenceResponse(
                [pb_utils.Tensor(t.name, arrays[t.name].astype(t.dtype, copy=False)) for t in self.outputs]
            ))
        return responses
