"""Typed Python-model parameters: the class the build writes into config.pbtxt is the class
model.py reads back; keys and defaults exist once."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import trtserve_contract as contract
from trtserve_backend.model_config import ModelConfigError, PythonModelConfig
from trtserve_backend.parameters import (
    PipelineParameters,
    OrtEncoderParameters,
    PostprocessParameters,
    TokenizerParameters,
    TorchEncoderParameters,
    hot_group,
    is_hot_instance,
    pool_group,
)
from trtserve_backend.postprocess import Embedder, LabelledClassifier
from trtserve_backend.steps import make_step_postprocess
from google.protobuf import json_format

from trtserve_build.core.records import ExportManifest
from trtserve_build.stages.triton_config import deployment_configs

from .test_triton_config import with_engine

ALL = (TokenizerParameters, OrtEncoderParameters, TorchEncoderParameters, PostprocessParameters)


def manifest(spec) -> ExportManifest:
    hidden, labels = 384, spec.model.labels
    output = contract.LOGITS if spec.task == contract.CLASSIFICATION else contract.POOLED
    return ExportManifest(spec.name, spec.task, "f", "ckpt", contract.ENCODER_INPUTS, output, hidden,
                          len(labels), tuple(labels), 0, 17, "sha", 0.0, 1.0, 1, 0.0)


def python_model_config(config) -> PythonModelConfig:
    """What Triton hands model.py: the config as JSON (args["model_config"])."""
    return PythonModelConfig.from_dict(json_format.MessageToDict(config, preserving_proto_field_name=True))


@pytest.mark.parametrize("variant", ["cpu", "gpu_torch"])
def test_generated_parameters_read_back_by_the_same_class(sentiment_spec, embed_spec, variant):
    """The three steps of the ensemble topology, each with its own class."""
    role = {"_tokenizer": TokenizerParameters, "_postprocess": PostprocessParameters,
            "_encoder": OrtEncoderParameters if variant == "cpu" else TorchEncoderParameters}
    sentiment_spec, embed_spec = (with_engine(s, variant, topology="ensemble") for s in (sentiment_spec, embed_spec))
    for spec in (sentiment_spec, embed_spec):
        for config in deployment_configs(spec, manifest(spec), variant):
            cls = next((c for suffix, c in role.items() if config.name.endswith(suffix)), None)
            if cls is None:  # the ensemble has no parameters
                assert not config.parameters
                continue
            cfg = python_model_config(config)
            params = cls.from_config(cfg)
            assert params.to_config() == cfg.parameters  # every key written is a field, and back
    tok = TokenizerParameters.from_config(python_model_config(deployment_configs(
        sentiment_spec, manifest(sentiment_spec), variant)[1]))
    assert tok.length_buckets == tuple(sentiment_spec.model.length_buckets)
    assert tok.max_sequence_length == sentiment_spec.model.max_sequence_length


@pytest.mark.parametrize("variant", ["cpu", "gpu_torch"])
def test_the_one_model_holds_each_steps_parameters(sentiment_spec, embed_spec, variant):
    """The single topology (the default where the engine runs in Python): one config holds the
    tokenizer's, the engine's, the postprocess's and the pipeline's parameters, each read back by
    its own class, and nothing else."""
    engine_cls = OrtEncoderParameters if variant == "cpu" else TorchEncoderParameters
    for spec in (sentiment_spec, embed_spec):
        (config,) = deployment_configs(spec, manifest(spec), variant)
        cfg = python_model_config(config)
        union = {}
        for cls in (TokenizerParameters, engine_cls, PostprocessParameters, PipelineParameters):
            union.update(cls.from_config(cfg).to_config())
        assert union == cfg.parameters
        assert TokenizerParameters.from_config(cfg).length_buckets == tuple(spec.model.length_buckets)


@pytest.mark.parametrize("cls", ALL)
def test_defaults_are_what_the_build_writes(cls):
    """A config without the optional keys reads as the generator's values (the old model.py
    defaults disagreed: output_device "cpu" vs the generated "gpu")."""
    required = {f.name: _example(f) for f in dataclasses.fields(cls)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
    written = cls(**required).to_config()
    minimal = {k: v for k, v in written.items()
               if k in {cls.key(f) for f in dataclasses.fields(cls) if f.name in required}}
    assert cls.from_parameters(minimal) == cls(**required)
    assert cls.from_parameters(written) == cls(**required)


def _example(f: dataclasses.Field):
    t = str(f.type)
    return {"str": "x", "int": 3, "bool": True}.get(t, (1, 2) if "int" in t else ("a", "b"))


def test_torch_and_onnx_encoder_defaults():
    assert TorchEncoderParameters("m.pt", "fp16", "sdpa").output_device == "gpu"
    assert TorchEncoderParameters("m.pt", "fp16", "sdpa").merge_lengths == "pad"
    assert OrtEncoderParameters("m.onnx").merge_lengths == "group"
    assert TorchEncoderParameters("m.pt", "fp16", "sdpa").to_config()["FORCE_CPU_ONLY_INPUT_TENSORS"] == "no"


def test_missing_and_malformed_parameters_are_named():
    with pytest.raises(ModelConfigError, match="sentiment_tokenizer: config.pbtxt lacks parameter 'pad_token_id'"):
        TokenizerParameters.from_parameters({"tokenizer_file": "t.json", "max_sequence_length": "8",
                                             "length_buckets": "[8]"}, "sentiment_tokenizer")
    with pytest.raises(ModelConfigError, match="'max_sequence_length': 'eight' is not a valid int"):
        TokenizerParameters.from_parameters({"tokenizer_file": "t.json", "max_sequence_length": "eight",
                                             "length_buckets": "[8]", "pad_token_id": "0"}, "m")
    with pytest.raises(ModelConfigError, match="cuda_graphs"):
        TorchEncoderParameters.from_parameters({"torchscript_file": "m", "precision": "fp16", "attention": "sdpa",
                                                "cuda_graphs": "yes"}, "m")


def test_labels_are_left_out_for_embeddings():
    assert PostprocessParameters("embedding").to_config() == {"task": "embedding"}
    assert PostprocessParameters("classification", ("negative", "positive")).to_config() == {
        "task": "classification", "labels": '["negative", "positive"]'}


# ---- the postprocess dispatch -------------------------------------------------------------------

def test_postprocess_factory_dispatches_per_task():
    classify = make_step_postprocess(PostprocessParameters(contract.CLASSIFICATION, tuple(contract.SENTIMENT_LABELS)))
    assert isinstance(classify, LabelledClassifier)
    out = classify(np.array([[2.0, 0.0], [-1.0, 3.0]], dtype=np.float32))
    assert set(out) == {contract.LABEL, contract.SCORE, contract.PROBABILITIES}
    assert out[contract.LABEL].ravel().tolist() == [b"negative", b"positive"]
    np.testing.assert_allclose(out[contract.PROBABILITIES].sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(out[contract.SCORE].ravel(), out[contract.PROBABILITIES].max(axis=1))
    embed = make_step_postprocess(PostprocessParameters(contract.EMBEDDING_TASK))
    assert isinstance(embed, Embedder)
    vectors = embed(np.array([[3.0, 4.0], [0.0, 0.0]]))[contract.EMBEDDING]
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(vectors[0], [0.6, 0.8], rtol=1e-6)
    assert np.isfinite(vectors).all()


@pytest.mark.parametrize("task, labels, message", [
    ("classification", (), "at least two labels"),
    ("embedding", ("a", "b"), "takes no labels"),
    ("question-answering", (), "unknown task"),
    ("classify", ("a", "b"), "unknown task"),
])
def test_postprocess_factory_rejects(task, labels, message):
    with pytest.raises(ValueError, match=message):
        make_step_postprocess(PostprocessParameters(task, tuple(labels)))


def test_fidelity_report_uses_the_served_postprocess():
    from trtserve_build.stages.fidelity import public_outputs

    logits = np.array([[1.0, -1.0], [0.5, 0.25]])
    served = make_step_postprocess(PostprocessParameters(contract.CLASSIFICATION, ("n", "p")))(logits)[contract.PROBABILITIES]
    np.testing.assert_array_equal(public_outputs(logits, contract.CLASSIFICATION), served)
    pooled = np.array([[1.0, 2.0, 2.0]])
    np.testing.assert_array_equal(public_outputs(pooled, contract.EMBEDDING_TASK),
                                  make_step_postprocess(PostprocessParameters(contract.EMBEDDING_TASK))(pooled)[contract.EMBEDDING])


@pytest.mark.parametrize("instance, hot", [
    ("sentiment_hot_0", True),  # Triton r24.10: <group>_<index>
    ("sentiment_hot", True),  # older cores: a group of one instance is named <group>
    ("sentiment_pool_0", False), ("sentiment_pool_3", False), ("sentiment_0", False), ("", False),
    ("sentiment_hot_extra_0", False), ("sentiment_tokenizer_hot_0", False),
])
def test_hot_instance_is_recognised_by_its_groups_name(instance, hot):
    assert is_hot_instance(instance, "sentiment") is hot
    assert hot_group("sentiment") == "sentiment_hot" and pool_group("sentiment") == "sentiment_pool"


def test_the_hot_instance_runs_with_the_hot_threads():
    params = OrtEncoderParameters(onnx_file="m.onnx", intra_op_threads=1, thread_spinning=True,
                                  hot_intra_op_threads=16, hot_thread_spinning=False, solo_intra_op_threads=32)
    back = OrtEncoderParameters.from_parameters(params.to_config())
    assert back == params
    # the pool: its own threads, and no solo session
    assert back.for_instance(hot=False) == dataclasses.replace(params, solo_intra_op_threads=0)
    hot = back.for_instance(hot=True)
    assert (hot.intra_op_threads, hot.thread_spinning, hot.solo_intra_op_threads) == (16, False, 32)
    assert dataclasses.replace(hot, intra_op_threads=1, thread_spinning=True) == params
