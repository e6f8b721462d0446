"""Where an architecture cannot work, the build says which architecture and why."""
import re
import types

import pytest

from trtserve_build.core.errors import EngineBuildError, ExportError, ToleranceError
from trtserve_build.core.records import ExportManifest
from trtserve_build.core.spec import parse_spec
from trtserve_build.pipeline import build as build_pipeline
from trtserve_build.stages import export as export_stage


def _spec(checkpoint, name="some_model"):
    return parse_spec({
        "name": name, "task": "embedding",
        "model": {"checkpoint": str(checkpoint), "max_sequence_length": 32, "length_buckets": [16, 32]},
        "engine": {"cpu": {"backend": "onnxruntime"}, "gpu": {"backend": "tensorrt", "precision": "fp16"}},
    })


def test_an_unregistered_architecture_is_refused_by_name(tmp_path):
    from transformers import AlbertConfig

    AlbertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64).save_pretrained(tmp_path)
    with pytest.raises(ExportError, match=r"some_model: checkpoint .*model_type 'albert' is not one of the proven "
                                          r"encoder architectures \['bert', 'deberta-v2', 'distilbert'"):
        export_stage.export(_spec(tmp_path), tmp_path, force=True)


def test_positions_from_the_padding_index_need_the_tokenizers_pad_id():
    from trtserve_build.core.architectures import get_architecture

    roberta = get_architecture("roberta")
    tokenizer = types.SimpleNamespace(pad_token_id=0)
    with pytest.raises(ExportError, match="roberta computes position ids from the padding index.*pads with id 0.*"
                                          "config.pad_token_id is 1"):
        export_stage.check_padding(roberta, tokenizer, types.SimpleNamespace(pad_token_id=1), "x")
    export_stage.check_padding(roberta, types.SimpleNamespace(pad_token_id=1), types.SimpleNamespace(pad_token_id=1), "x")
    # BERT numbers positions 0..n-1 whatever the pad id
    export_stage.check_padding(get_architecture("bert"), tokenizer, types.SimpleNamespace(pad_token_id=1), "x")


@pytest.mark.parametrize("error", [EngineBuildError("In node 12 (parseGraph): UNSUPPORTED_NODE: Sign"),
                                   ToleranceError("fidelity gate failed for 1 variant(s): 3 outputs contain NaN/Inf")])
def test_an_engine_stage_failure_names_the_architecture(tmp_path, monkeypatch, error):
    monkeypatch.setenv("TRTSERVE_CACHE", str(tmp_path))
    spec = _spec(tmp_path / "ckpt", name="deberta_embed")
    folder = tmp_path / "engines" / spec.name
    folder.mkdir(parents=True)
    ExportManifest(name=spec.name, task=spec.task, fingerprint="f", checkpoint="c", inputs=("input_ids", "attention_mask"),
                   output="pooled", hidden_size=8, num_labels=0, labels=(), pad_token_id=0, opset=17, onnx_sha256="s",
                   max_abs_diff=0.0, min_cosine=1.0, checked_texts=1, seconds=0.0,
                   architecture="deberta-v2").write(folder)

    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(build_pipeline, "precision_graph", fail)
    with pytest.raises(type(error), match=r"deberta_embed: the deberta-v2 fp16 tensorrt engine cannot be built: "
                                          + re.escape(error.args[0])):
        build_pipeline.build_engine(spec, "gpu")
