"""Request size limits of the tokenizer, checked before decoding (trtserve_backend.limits)."""
from __future__ import annotations

import numpy as np
import pytest

from trtserve_backend.limits import MAX_TEXT_BYTES_PARAM, MAX_TEXTS_PARAM, RequestLimits, RequestTooLargeError
from trtserve_backend.tokenize import InvalidTextError


def _tensor(*texts: bytes) -> np.ndarray:
    return np.array([[t] for t in texts], dtype=np.object_)


def test_limits_come_from_the_config_parameters():
    limits = RequestLimits.from_parameters({MAX_TEXT_BYTES_PARAM: "100", MAX_TEXTS_PARAM: "2", "other": "x"})
    assert limits == RequestLimits(max_text_bytes=100, max_texts=2)
    assert RequestLimits.from_parameters({}) == RequestLimits(0, 0)
    with pytest.raises(ValueError, match="max_request_texts must be >= 0"):
        RequestLimits.from_parameters({MAX_TEXTS_PARAM: "-1"})


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


def test_generated_tokenizer_config_carries_the_spec_limits(sentiment_spec):
    from tests.unit.test_triton_config import manifest_for
    from trtserve_build.triton_config import tokenizer_config

    config = tokenizer_config(sentiment_spec, manifest_for(sentiment_spec), "cpu")
    params = {k: v.string_value for k, v in config.parameters.items()}
    assert params[MAX_TEXT_BYTES_PARAM] == str(sentiment_spec.batching.max_request_text_bytes) == "1048576"
    assert params[MAX_TEXTS_PARAM] == "64"
    assert RequestLimits.from_parameters(params) == RequestLimits(1_048_576, 64)
