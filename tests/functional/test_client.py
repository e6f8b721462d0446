"""The client library and CLI against the real server."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from trtserve_client import (
    BadInputError,
    ModelNotFoundError,
    ModelNotReadyError,
    ServerUnavailableError,
    TrtServeClient,
)
from trtserve_server.embedded import free_port

TRTSERVE = str(Path(sys.executable).parent / "trtserve")  # the installed console script


@pytest.fixture
def client(server, protocol):
    url = server.grpc_url if protocol == "grpc" else server.http_url
    with TrtServeClient(url, protocol=protocol, timeout_s=30) as c:
        yield c


def test_classify_and_embed(client):
    results = client.classify(["a gripping, beautifully acted film", "a tedious, joyless slog"])
    assert [r.label for r in results] == ["positive", "negative"]
    for r in results:
        assert r.score == pytest.approx(max(r.probabilities.values()), rel=1e-6)
        assert set(r.probabilities) == {"negative", "positive"}
    vectors = client.embed(["one text", "another text"])
    assert vectors.shape == (2, 384) and vectors.dtype == np.float32


def test_large_inputs_are_split_into_batches_in_order(client):
    texts = [f"text {i} " + ("wonderful " if i % 2 else "awful ") * (1 + i % 7) for i in range(150)]
    vectors = client.embed(texts)
    assert vectors.shape == (150, 384)
    # order preserved: each chunked result equals the single-request result
    for i in (0, 63, 64, 149):
        np.testing.assert_allclose(vectors[i], client.embed([texts[i]])[0], atol=1e-5)
    assert len(client.classify(texts)) == 150


def _successful_inferences(server, model: str) -> int:
    import tritonclient.http as http

    stats = http.InferenceServerClient(server.http_url).get_inference_statistics(model)
    return int(stats["model_stats"][0]["inference_stats"]["success"]["count"])


def test_wait_ready_sends_a_real_inference(client, server):
    before = {m: _successful_inferences(server, m) for m in ("sentiment", "embed")}
    waited = client.wait_ready(["sentiment", "embed"], timeout_s=30)
    assert 0 <= waited < 30
    for model, count in before.items():  # each model answered a real request, not only /health
        assert _successful_inferences(server, model) >= count + 1
    with pytest.raises(ModelNotFoundError, match="still failing after"):
        client.wait_ready("no_such_model", timeout_s=0)


def test_typed_errors(client, protocol):
    with pytest.raises(ModelNotFoundError):
        client.classify(["hi"], model="no_such_model")
    with pytest.raises(BadInputError, match="UTF-8"):
        client.classify([b"\xff\xfe"])
    with pytest.raises(BadInputError):
        client.classify([123])
    assert client.classify("still fine")[0].label in {"negative", "positive"}


def test_unreachable_server(protocol):
    port = free_port()
    with TrtServeClient(f"127.0.0.1:{port}", protocol=protocol, timeout_s=2) as c:
        with pytest.raises(ServerUnavailableError):
            c.classify("hello")
        with pytest.raises((ServerUnavailableError, ModelNotReadyError)):
            c.wait_ready("sentiment", timeout_s=1)


def test_cli_classify_and_embed(server):
    out = subprocess.run(
        [TRTSERVE, "--url", server.grpc_url, "classify",
         "a gripping, beautifully acted film"],
        capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "positive" in out.stdout
    out = subprocess.run(
        [TRTSERVE, "--url", server.http_url, "--protocol", "http", "--json",
         "embed", "hello"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "384" in out.stdout or out.stdout.count(",") >= 383


def test_cli_unknown_model_exit_code(server):
    out = subprocess.run(
        [TRTSERVE, "--url", server.grpc_url, "--model", "nope", "classify", "x"],
        capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "nope" in out.stderr
