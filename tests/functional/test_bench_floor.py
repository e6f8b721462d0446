"""The floor rows of `make bench` / `make gpu-bench`: a generated deployment whose models do no
work loads and answers the contract, in both topologies."""
from __future__ import annotations

import pytest

from bench.ensemble_floor import write_floor_repository
from trtserve_build.core.pbtxt import read_config


@pytest.mark.parametrize("topology, expected", [
    ("single", ["sentiment"]),
    ("ensemble", ["sentiment", "sentiment_encoder", "sentiment_postprocess", "sentiment_tokenizer"]),
])
def test_floor_repository_keeps_the_configs_and_answers_the_contract(request, tmp_path, topology, expected):
    from trtserve_server.embedded import EmbeddedServer, Ports

    source = request.getfixturevalue("cpu_repository" if topology == "single" else "ensemble_repository")
    floor = write_floor_repository(source, tmp_path / "floor")
    models = sorted(p.name for p in floor.iterdir())
    assert models == expected
    for model in models:  # the same generated configs: only the work inside the models differs
        assert read_config(floor / model / "config.pbtxt") == read_config(source / model / "config.pbtxt")
    assert not list(floor.rglob("model.onnx")) and not list(floor.rglob("tokenizer.json"))
    with EmbeddedServer(floor, Ports.free(), log_path=tmp_path / "triton.log") as server:
        assert server.wait_ready(120) == ["sentiment"]
        out = server.infer_text("sentiment", ["a gripping film", "dull"])
    outputs = {o["name"]: o for o in out["outputs"]}
    assert outputs["LABEL"]["data"] == ["positive", "positive"]
    assert outputs["PROBABILITIES"]["shape"] == [2, 2] and outputs["SCORE"]["data"] == [0.5, 0.5]
