"""The two topologies of one deployment answer alike: the cpu variant as one Python model (the
default) and as the three-step ensemble, each on the real server with the real model."""
from __future__ import annotations

import numpy as np
import pytest
import tritonclient.http as httpclient

from .conftest import text_input

TEXTS = ["a gripping, beautifully acted film", "a dull, lifeless and painfully boring mess", "",
         "🎬 très bien", "x " * 400, "the plot is thin but the actors carry it"]


@pytest.fixture(scope="module")
def ensemble_server(ensemble_repository, tmp_path_factory):
    from trtserve_server.embedded import EmbeddedServer, Ports

    with EmbeddedServer(ensemble_repository, Ports.free(),
                        log_path=tmp_path_factory.mktemp("logs") / "ensemble.log") as srv:
        # the readiness probe finds the deployment, not its steps (which also take TEXT)
        assert srv.wait_ready(180) == ["sentiment"]
        yield srv


def _infer(server, texts):
    client = httpclient.InferenceServerClient(server.http_url)
    try:
        result = client.infer("sentiment", [text_input(httpclient, texts)])
        return {name: result.as_numpy(name) for name in ("LABEL", "SCORE", "PROBABILITIES")}
    finally:
        client.close()


def test_single_model_and_ensemble_give_the_same_answers(server, ensemble_server):
    # every default deployment is one model (no _tokenizer/_encoder/_postprocess steps listed)
    assert server.text_models() == ["embed", "ner", "qa", "sentiment"]
    for texts in (TEXTS, TEXTS[:1], TEXTS[4:5]):  # one batch of mixed lengths, and single texts
        single, ensemble = _infer(server, texts), _infer(ensemble_server, texts)
        assert single["LABEL"].tolist() == ensemble["LABEL"].tolist()
        np.testing.assert_allclose(single["PROBABILITIES"], ensemble["PROBABILITIES"], atol=1e-6)
        np.testing.assert_allclose(single["SCORE"], ensemble["SCORE"], atol=1e-6)


def test_bad_text_fails_alone_in_both(server, ensemble_server):
    for srv in (server, ensemble_server):
        client = httpclient.InferenceServerClient(srv.http_url)
        with pytest.raises(Exception, match="not valid UTF-8: byte 0xff at offset 0"):
            client.infer("sentiment", [text_input(httpclient, [b"\xff"])])
        assert _infer(srv, TEXTS[:1])["LABEL"][0, 0] == b"positive"
        client.close()
