"""`make bench`'s floor row: the generated ensemble with do-nothing steps loads and answers."""
from __future__ import annotations

from bench.ensemble_floor import write_floor_repository
from trtserve_build.core.pbtxt import read_config


def test_floor_repository_keeps_the_configs_and_answers_the_contract(cpu_repository, tmp_path):
    from trtserve_server.embedded import EmbeddedServer, Ports

    floor = write_floor_repository(cpu_repository, tmp_path / "floor")
    models = sorted(p.name for p in floor.iterdir())
    assert models == ["sentiment", "sentiment_encoder", "sentiment_postprocess", "sentiment_tokenizer"]
    for model in models:  # the same generated configs: only the work inside the steps differs
        assert read_config(floor / model / "config.pbtxt") == read_config(cpu_repository / model / "config.pbtxt")
    assert not (floor / "sentiment_encoder" / "1" / "model.onnx").exists()
    with EmbeddedServer(floor, Ports.free(), log_path=tmp_path / "triton.log") as server:
        assert server.wait_ready(120) == ["sentiment"]
        out = server.infer_text("sentiment", ["a gripping film", "dull"])
    outputs = {o["name"]: o for o in out["outputs"]}
    assert outputs["LABEL"]["data"] == ["positive", "positive"]
    assert outputs["PROBABILITIES"]["shape"] == [2, 2] and outputs["SCORE"]["data"] == [0.5, 0.5]
