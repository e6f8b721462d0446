"""bench/floor_outputs.py: the one-output copies of a floor model keep its config but one output."""
from __future__ import annotations

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from bench.floor_outputs import one_output_copies


def test_one_output_copies_keep_everything_but_the_other_outputs(tmp_path):
    config = mc.ModelConfig(name="sentiment", backend="python", max_batch_size=64)
    for name, dtype in (("LABEL", mc.TYPE_STRING), ("SCORE", mc.TYPE_FP32), ("PROBABILITIES", mc.TYPE_FP32)):
        config.output.add(name=name, data_type=dtype, dims=[2 if name == "PROBABILITIES" else 1])
    config.dynamic_batching.preferred_batch_size.extend([8, 16])
    (tmp_path / "sentiment" / "1").mkdir(parents=True)
    (tmp_path / "sentiment" / "config.pbtxt").write_text(text_format.MessageToString(config))
    (tmp_path / "sentiment" / "1" / "model.py").write_text("# floor\n")

    names = one_output_copies(tmp_path, "sentiment")

    assert names == ["sentiment_only_label", "sentiment_only_score", "sentiment_only_probabilities"]
    for name, output in zip(names, ("LABEL", "SCORE", "PROBABILITIES")):
        copy = text_format.Parse((tmp_path / name / "config.pbtxt").read_text(), mc.ModelConfig())
        assert copy.name == name and [o.name for o in copy.output] == [output]
        assert copy.max_batch_size == 64 and list(copy.dynamic_batching.preferred_batch_size) == [8, 16]
        assert (tmp_path / name / "1" / "model.py").read_text() == "# floor\n"
    original = text_format.Parse((tmp_path / "sentiment" / "config.pbtxt").read_text(), mc.ModelConfig())
    assert len(original.output) == 3
