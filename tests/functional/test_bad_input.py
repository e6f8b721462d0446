"""Bad input gets a correct answer or a clear error, and the server answers the next good request."""
import numpy as np
import pytest

import trtserve_contract as contract

from .conftest import infer_texts, text_input


def assert_still_serving(raw_client):
    result = infer_texts(raw_client, "sentiment", ["a gripping, beautifully acted film"])
    assert result.as_numpy(contract.LABEL)[0, 0] == b"positive"


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("", id="empty"),
        pytest.param("   \t\n ", id="whitespace"),
        pytest.param("great " * 16_667, id="100k-chars"),
        pytest.param("🎬🍿😍 ¡Qué película! これは素晴らしい映画です。 Очень хороший фильм. مذهل", id="emoji-non-latin"),
        pytest.param("\x00\x01 control characters \u200b\ufeff", id="control-chars"),
    ],
)
@pytest.mark.parametrize("model", ["sentiment", "embed"])
def test_unusual_text_is_answered(raw_client, model, text):
    result = infer_texts(raw_client, model, [text, "plain text beside it"])
    if model == "sentiment":
        assert {x[0] for x in result.as_numpy(contract.LABEL)} <= {b"negative", b"positive"}
        probs = result.as_numpy(contract.PROBABILITIES)
        assert np.isfinite(probs).all()
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    else:
        emb = result.as_numpy(contract.EMBEDDING)
        assert np.isfinite(emb).all()
        np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)
    assert_still_serving(raw_client)


def test_long_text_is_truncated_not_rejected(raw_client):
    long_text = "the film is wonderful. " * 5000  # ~115,000 characters
    short = infer_texts(raw_client, "embed", ["the film is wonderful. " * 200]).as_numpy(contract.EMBEDDING)
    long = infer_texts(raw_client, "embed", [long_text]).as_numpy(contract.EMBEDDING)
    # Both truncate to the same first max_sequence_length tokens.
    np.testing.assert_allclose(short, long, atol=1e-5)


def expect_error(raw_client, call, *fragments):
    with pytest.raises(raw_client.tc.InferenceServerException) as info:
        call()
    message = str(info.value).lower()
    assert any(f.lower() in message for f in fragments), message
    assert_still_serving(raw_client)
    return message


def test_invalid_utf8_is_a_clear_error(raw_client):
    expect_error(raw_client, lambda: infer_texts(raw_client, "sentiment", [b"ok", b"\xff\xfe broken"]),
                 "not valid utf-8")


def test_wrong_dtype(raw_client):
    tc = raw_client.tc
    inp = tc.InferInput("TEXT", [1, 1], "FP32")
    inp.set_data_from_numpy(np.zeros((1, 1), dtype=np.float32))
    expect_error(raw_client, lambda: raw_client.infer("sentiment", [inp]), "data-type", "datatype", "dtype")


def test_wrong_input_name(raw_client):
    expect_error(raw_client, lambda: raw_client.infer("sentiment", [text_input(raw_client.tc, ["hi"], name="TXT")]),
                 "TXT", "unexpected inference input")


def test_unknown_model(raw_client):
    expect_error(raw_client, lambda: infer_texts(raw_client, "no_such_model", ["hi"]), "no_such_model")


def test_batch_above_max_batch_size(raw_client):
    expect_error(raw_client, lambda: infer_texts(raw_client, "sentiment", ["hi"] * 65), "batch", "max")


def test_wrong_shape(raw_client):
    tc = raw_client.tc
    data = np.array([[b"a", b"b"]], dtype=np.object_)
    inp = tc.InferInput("TEXT", [1, 2], "BYTES")
    inp.set_data_from_numpy(data)
    expect_error(raw_client, lambda: raw_client.infer("sentiment", [inp]), "shape")
