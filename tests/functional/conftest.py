"""Functional tier: the real embedded Triton server on free ports, serving the real repository."""
from __future__ import annotations

import numpy as np
import pytest

# Every test here is marked `functional` by tests/conftest.py (a pytestmark in a conftest is ignored).


@pytest.fixture(scope="session")
def cpu_repository(tmp_path_factory, sentiment_spec, embed_spec, qa_spec, ner_spec):
    """The cpu variant, generated from the shipped specs (cached export/training are reused)."""
    from trtserve_build.pipeline.build import build_variant

    out = tmp_path_factory.mktemp("repository") / "cpu"
    return build_variant([sentiment_spec, embed_spec, qa_spec, ner_spec], "cpu", out)


@pytest.fixture(scope="session")
def ensemble_repository(tmp_path_factory, sentiment_spec):
    """The cpu variant of ``sentiment`` served as the three-step ensemble (topology "ensemble")."""
    import dataclasses

    from trtserve_build.pipeline.build import build_variant

    engine = dataclasses.replace(sentiment_spec.engine("cpu"), topology="ensemble")
    spec = dataclasses.replace(sentiment_spec, engines={**sentiment_spec.engines, "cpu": engine})
    return build_variant([spec], "cpu", tmp_path_factory.mktemp("repository") / "cpu_ensemble")


@pytest.fixture(scope="session")
def server(cpu_repository, tmp_path_factory):
    from trtserve_server.embedded import EmbeddedServer, Ports

    log = tmp_path_factory.mktemp("logs") / "triton.log"
    srv = EmbeddedServer(cpu_repository, Ports.free(), log_path=log)
    srv.start()
    try:
        srv.wait_ready(timeout_s=180)
        yield srv
    finally:
        srv.stop()


@pytest.fixture(params=["http", "grpc"])
def protocol(request):
    return request.param


@pytest.fixture
def raw_client(server, protocol):
    """A plain tritonclient client for the chosen protocol."""
    if protocol == "http":
        import tritonclient.http as tc

        client = tc.InferenceServerClient(server.http_url)
    else:
        import tritonclient.grpc as tc

        client = tc.InferenceServerClient(server.grpc_url)
    client.tc = tc
    yield client
    client.close()


def text_input(tc, texts, name="TEXT", datatype="BYTES"):
    data = np.array([[t if isinstance(t, bytes) else t.encode("utf-8")] for t in texts], dtype=np.object_)
    inp = tc.InferInput(name, list(data.shape), datatype)
    inp.set_data_from_numpy(data)
    return inp


def infer_texts(raw_client, model, texts):
    return raw_client.infer(model, [text_input(raw_client.tc, texts)])


def served_models(server, deployment: str) -> dict[str, str]:
    """Which served model plays each role of ``deployment``: the door (where requests arrive
    first) and the engine: the one Python model in the single topology; in an ensemble the
    tokenizer and the encoder."""
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(server.http_url)
    config = client.get_model_config(deployment)
    client.close()
    if config.get("platform") == "ensemble":
        return {"door": f"{deployment}_tokenizer", "engine": f"{deployment}_encoder"}
    return {"door": deployment, "engine": deployment}
