"""The ensemble contract, as the real server reports it and answers it over HTTP and gRPC."""
import numpy as np
import pytest

import trtserve_contract as contract

from .conftest import infer_texts


def _config(raw_client, protocol, model):
    if protocol == "grpc":
        from google.protobuf.json_format import MessageToDict

        return MessageToDict(raw_client.get_model_config(model).config, preserving_proto_field_name=True)
    return raw_client.get_model_config(model)


def _io(entries):
    return {e["name"]: (e["data_type"], [int(d) for d in e["dims"]]) for e in entries}


def test_sentiment_contract(raw_client, protocol):
    cfg = _config(raw_client, protocol, "sentiment")
    assert int(cfg["max_batch_size"]) >= 64
    assert _io(cfg["input"]) == {"TEXT": ("TYPE_STRING", [1])}
    assert _io(cfg["output"]) == {
        "LABEL": ("TYPE_STRING", [1]), "SCORE": ("TYPE_FP32", [1]), "PROBABILITIES": ("TYPE_FP32", [2])}
    # the cpu variant runs its engine (ONNX Runtime) in Python: one model, one hop, same contract
    assert cfg["backend"] == "python" and cfg.get("platform", "") != "ensemble" and "ensemble_scheduling" not in cfg


def test_embed_contract(raw_client, protocol):
    cfg = _config(raw_client, protocol, "embed")
    assert _io(cfg["input"]) == {"TEXT": ("TYPE_STRING", [1])}
    assert _io(cfg["output"]) == {"EMBEDDING": ("TYPE_FP32", [384])}
    assert int(cfg["max_batch_size"]) >= 64


def test_sentiment_answers(raw_client):
    texts = ["a gripping, beautifully acted film", "a dull, lifeless and painfully boring mess"]
    result = infer_texts(raw_client, "sentiment", texts)
    labels = [x[0].decode() for x in result.as_numpy(contract.LABEL)]
    assert labels == ["positive", "negative"]
    probs = result.as_numpy(contract.PROBABILITIES)
    scores = result.as_numpy(contract.SCORE)
    assert probs.shape == (2, 2) and scores.shape == (2, 1)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(scores[:, 0], probs.max(axis=1), rtol=1e-6)


def test_embed_answers_unit_vectors(raw_client):
    result = infer_texts(raw_client, "embed", ["first sentence", "second one, a bit longer than the first"])
    emb = result.as_numpy(contract.EMBEDDING)
    assert emb.shape == (2, 384) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("n", [1, 64])
def test_batches_up_to_max_batch_size(raw_client, n):
    texts = [f"review number {i}: " + "good " * (i % 40) for i in range(n)]
    result = infer_texts(raw_client, "sentiment", texts)
    assert result.as_numpy(contract.PROBABILITIES).shape == (n, 2)
