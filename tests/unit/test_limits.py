"""Request size limits of the tokenizer, checked before decoding (trtserve_backend.limits)."""
from __future__ import annotations

import numpy as np
import pytest

from trtserve_backend.limits import RequestLimits, RequestTooLargeError
from trtserve_backend.parameters import TokenizerParameters
from trtserve_backend.tokenize import InvalidTextError


def _tensor(*texts: bytes) -> np.ndarray:
    return np.array([[t] for t in texts], dtype=np.object_)


def test_limits_are_tokenizer_parameters_with_no_limit_by_default():
    base = {"tokenizer_file": "t.json", "max_sequence_length": "128", "length_buckets": "[8, 128]", "pad_token_id": "0"}
    params = TokenizerParameters.from_parameters({**base, "max_request_text_bytes": "100", "max_request_texts": "2"})
    assert (params.max_request_text_bytes, params.max_request_texts) == (100, 2)
    old = TokenizerParameters.from_parameters(base)  # a repository generated before the limits
    assert (old.max_request_text_bytes, old.max_request_texts) == (0, 0)


def test_requests_within_the_limits_pass():
    RequestLimits(max_text_bytes=10, max_texts=2).check(_tensor(b"12345", b"67890"))
    RequestLimits().check(_tensor(b"x" * 10_000_000))  # 0 = no limit


def test_too_many_bytes_is_a_clear_invalid_text_error():
    with pytest.raises(RequestTooLargeError, match=r"over the limit of 10 bytes \(11 bytes in 2 text\(s\)\)"):
        RequestLimits(max_text_bytes=10).check(_tensor(b"123456", b"78901"))
    assert issubclass(RequestTooLargeError, InvalidTextError)  # the tokenizer answers INVALID_ARG


def test_too_many_texts_is_named():
    with pytest.raises(RequestTooLargeError, match="3 texts in one request, the limit is 2"):
        RequestLimits(max_texts=2).check(_tensor(b"a", b"b", b"c"))


def test_several_text_inputs_sum_their_bytes_and_count_texts_each():
    """Question answering: QUESTION and CONTEXT of one request share the byte limit."""
    limits = RequestLimits(max_text_bytes=10, max_texts=2)
    limits.check_inputs({"QUESTION": _tensor(b"12", b"34"), "CONTEXT": _tensor(b"567", b"890")})
    with pytest.raises(RequestTooLargeError, match=r"QUESTION \+ CONTEXT: .* limit of 10 bytes \(11 bytes in 2 text"):
        limits.check_inputs({"QUESTION": _tensor(b"12", b"34"), "CONTEXT": _tensor(b"5678", b"890")})
    with pytest.raises(RequestTooLargeError, match="CONTEXT: 3 texts in one request, the limit is 2"):
        limits.check_inputs({"QUESTION": _tensor(b"a", b"b"), "CONTEXT": _tensor(b"a", b"b", b"c")})


def test_generated_tokenizer_config_carries_the_spec_limits(sentiment_spec):
    from tests.unit.test_triton_config import manifest_for
    from trtserve_build.stages.triton_config import tokenizer_config

    config = tokenizer_config(sentiment_spec, manifest_for(sentiment_spec), "cpu")
    params = TokenizerParameters.from_parameters({k: v.string_value for k, v in config.parameters.items()})
    assert params.max_request_text_bytes == sentiment_spec.batching.max_request_text_bytes == 1_048_576
    assert params.max_request_texts == 64
