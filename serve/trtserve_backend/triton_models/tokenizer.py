"""``<name>_tokenizer``: TEXT [batch,1] BYTES -> encoder inputs padded to a length bucket."""
from __future__ import annotations

import triton_python_backend_utils as pb_utils

from trtserve_backend.limits import RequestLimits
from trtserve_backend.model_config import PythonModelConfig
from trtserve_backend.parameters import TokenizerParameters
from trtserve_backend.tokenize import BucketTokenizer
from trtserve_backend.triton_models._common import error_response, read_texts, version_dir


class TritonPythonModel:
    def initialize(self, args):
        cfg = PythonModelConfig.from_args(args)
        self.input_name = cfg.single_input().name
        self.outputs = cfg.outputs
        params = TokenizerParameters.from_config(cfg)
        self.tokenizer = BucketTokenizer.from_parameters(params, version_dir(args), [t.name for t in cfg.outputs])
        self.limits = RequestLimits(params.max_request_text_bytes, params.max_request_texts)

    def execute(self, requests):
        texts, errors = read_texts(requests, self.input_name, self.limits)
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
