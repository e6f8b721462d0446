"""The two topologies of one deployment answer alike: the cpu variant as one Python model (the
default) and as the three-step ensemble, each on the real server with the real model."""
from __future__ import annotations

import pathlib

import numpy as np
import pytest
import tritonclient.http as httpclient

from trtserve_backend.busy import BUSY, PREFIX, SLOTS, board_directory

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



@pytest.fixture(scope="module")
def hot_server(sentiment_spec, tmp_path_factory):
    """``sentiment`` (cpu) as one model of 3 instances whose hot instance has its own threads,
    set explicitly so that they differ on any host ("auto" gives them every core only where the
    pool runs one thread each: core.instances.host_sized)."""
    import dataclasses

    from trtserve_build.pipeline.build import build_variant
    from trtserve_server.embedded import EmbeddedServer, Ports

    engine = dataclasses.replace(sentiment_spec.engine("cpu"), instance_count=3, intra_op_threads=1,
                                 thread_spinning=True, hot_intra_op_threads=2, hot_thread_spinning=False,
                                 solo_intra_op_threads=3)
    spec = dataclasses.replace(sentiment_spec, engines={**sentiment_spec.engines, "cpu": engine})
    root = tmp_path_factory.mktemp("hot")
    repository = build_variant([spec], "cpu", root / "cpu")
    with EmbeddedServer(repository, Ports.free(), log_path=root / "triton.log") as srv:
        assert srv.wait_ready(180) == ["sentiment"]
        yield srv


def test_the_hot_instance_runs_onnx_runtime_on_the_hot_threads(hot_server):
    """Triton names the preferred group's instance so that model.py knows it (is_hot_instance):
    that instance's ONNX Runtime takes hot_intra_op_threads / hot_thread_spinning, each pool
    instance intra_op_threads / thread_spinning; each logs what it got when it starts. The hot
    one also opens its solo session (every core it is given, spinning), which it runs while the
    board that all three share (keyed by the server's process) shows no other busy."""
    import re

    from trtserve_backend.parameters import is_hot_instance
    from trtserve_server.processes import stubs_of

    log = hot_server.log_path.read_text(errors="replace")
    started = dict(re.findall(r"(sentiment_\w+): ONNX Runtime (intra-op threads \d+, spinning \w+(?:; alone: \d+ spinning)?)",
                              log))
    # the instances that logged are the server's three stubs
    assert set(started) == {s.instance for s in stubs_of(hot_server.process.pid)}, (started, log[-2000:])
    hot = [i for i in started if is_hot_instance(i, "sentiment")]
    assert hot == ["sentiment_hot_0"], started  # Triton 2.51: <group>_<index>
    assert started.pop(hot[0]) == "intra-op threads 2, spinning False; alone: 3 spinning"
    assert list(started.values()) == ["intra-op threads 1, spinning True"] * 2, started
    assert _infer(hot_server, TEXTS[:1])["LABEL"][0, 0] == b"positive"
    board = pathlib.Path(board_directory()) / f"{PREFIX}{hot_server.process.pid}-sentiment"
    assert board.exists(), sorted(p.name for p in board.parent.glob(PREFIX + "*"))
    slots = np.fromfile(board, dtype=np.int64)
    assert len(slots) == SLOTS and BUSY not in slots and slots[0] > 0  # idle; the hot instance ran


def test_the_hot_instance_answers_alike_alone_and_beside_a_busy_pool(hot_server):
    """One request at a time runs on the hot instance's solo session, many at once on the
    instances' own sessions: the same answers."""
    from concurrent.futures import ThreadPoolExecutor

    texts = [t for t in TEXTS if t] * 4
    alone = [_infer(hot_server, [t]) for t in texts]
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(lambda t: _infer(hot_server, [t]), texts))
    for a, b in zip(alone, together):
        assert a["LABEL"].tolist() == b["LABEL"].tolist()
        np.testing.assert_allclose(a["PROBABILITIES"], b["PROBABILITIES"], atol=1e-5)
