"""``<name>_tokenizer``: text inputs [batch,1] BYTES -> encoder inputs padded to a length bucket.

Classification and embedding: one row per text. Question answering and token classification
(the ``task`` parameter): one row per window of each item, plus the tensors the postprocess uses
to score and regroup the windows (trtserve_backend.windows). The tokenizer is the one the
one-model deployment runs too (trtserve_backend.steps.make_tokenizer).
"""
from __future__ import annotations

import triton_python_backend_utils as pb_utils

from trtserve_backend.limits import RequestLimits
from trtserve_backend.model_config import PythonModelConfig
from trtserve_backend.parameters import TokenizerParameters
from trtserve_backend.steps import make_tokenizer
from trtserve_backend.triton_models._common import OutputTensors, error_response, read_items, version_dir


class TritonPythonModel:
    def initialize(self, args):
        cfg = PythonModelConfig.from_args(args)
        params = TokenizerParameters.from_config(cfg)
        self.input_names = [t.name for t in cfg.inputs]
        self.output_tensors = OutputTensors(cfg.outputs)
        self.tokenizer = make_tokenizer(params, version_dir(args), [t.name for t in cfg.outputs])
        self.limits = RequestLimits(params.max_request_text_bytes, params.max_request_texts)

    def execute(self, requests):
        items, errors = read_items(requests, self.input_names, self.limits)
        encoded = self.tokenizer.encode_requests(items)
        responses = []
        for i, arrays in enumerate(encoded):
            if i in errors or isinstance(arrays, Exception):
                responses.append(error_response(errors.get(i) or str(arrays), invalid_argument=True))
                continue
            responses.append(pb_utils.InferenceResponse(self.output_tensors(arrays)))
        return responses
