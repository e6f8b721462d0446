"""The qa / ner deployments in the build: spec sections, generated configs, parameters, task heads."""
from __future__ import annotations

import copy
import dataclasses
import tomllib

import pytest
import trtserve_contract as contract
from tritonclient.grpc import model_config_pb2 as mc

from trtserve_backend.model_config import PythonModelConfig
from trtserve_backend.parameters import (
    OrtEncoderParameters,
    PipelineParameters,
    PostprocessParameters,
    TokenizerParameters,
    TorchEncoderParameters,
)
from trtserve_build.core.errors import SpecError
from trtserve_build.core.pbtxt import read_config, write_config
from trtserve_build.core.records import ExportManifest
from trtserve_build.core.spec import parse_spec
from trtserve_build.stages.triton_config import deployment_configs

from ..conftest import DEPLOYMENTS


def manifest_for(spec):
    return ExportManifest(
        name=spec.name, task=spec.task, fingerprint="f", checkpoint="c", inputs=contract.ENCODER_INPUTS,
        output=contract.LOGITS, hidden_size=384, num_labels=len(spec.model.labels), labels=spec.model.labels,
        pad_token_id=0, opset=17, onnx_sha256="0", max_abs_diff=0.0, min_cosine=1.0, checked_texts=1, seconds=0.0)


def raw(name):
    return tomllib.loads((DEPLOYMENTS / f"{name}.toml").read_text())


def as_ensemble(spec, variant):
    """``spec`` with ``variant`` served as the three-step ensemble (the cpu and gpu_torch variants
    default to one Python model)."""
    engine = dataclasses.replace(spec.engine(variant), topology="ensemble")
    return dataclasses.replace(spec, engines={**spec.engines, variant: engine})


@pytest.mark.parametrize("variant", ["cpu", "gpu", "gpu_torch"])
@pytest.mark.parametrize("name", ["qa", "ner"])
def test_configs_round_trip_and_the_wiring_is_closed(name, variant, qa_spec, ner_spec, tmp_path):
    spec = {"qa": qa_spec, "ner": ner_spec}[name]
    ensemble, *members = deployment_configs(as_ensemble(spec, variant), manifest_for(spec), variant)
    for config in (ensemble, *members):
        write_config(config, tmp_path / f"{config.name}.pbtxt")
        assert read_config(tmp_path / f"{config.name}.pbtxt") == config
    by_name = {m.name: m for m in members}
    available = {i.name for i in ensemble.input}
    for step in ensemble.ensemble_scheduling.step:
        member = by_name[step.model_name]
        assert set(step.input_map) == {i.name for i in member.input}
        assert set(step.input_map.values()) <= available
        assert set(step.output_map) == {o.name for o in member.output}
        available |= set(step.output_map.values())
    assert {o.name for o in ensemble.output} <= available


@pytest.mark.parametrize("name", ["qa", "ner"])
@pytest.mark.parametrize("variant", ["cpu", "gpu_torch"])
def test_one_model_holds_the_ensembles_contract_and_every_steps_parameters(name, variant, qa_spec, ner_spec, tmp_path):
    """The default topology where the engine runs in Python: one model with the ensemble's inputs
    and outputs, each step's typed parameters as the ensemble's steps get them, and the tensors
    the ensemble wires from the tokenizer to the postprocess named as the pipeline's side inputs."""
    spec = {"qa": qa_spec, "ner": ner_spec}[name]
    [one] = deployment_configs(spec, manifest_for(spec), variant)
    write_config(one, tmp_path / "one.pbtxt")
    assert read_config(tmp_path / "one.pbtxt") == one
    ensemble, tokenizer, encoder, post = deployment_configs(as_ensemble(spec, variant), manifest_for(spec), variant)
    assert (one.name, list(one.input), list(one.output)) == (ensemble.name, list(ensemble.input), list(ensemble.output))
    assert one.max_batch_size == ensemble.max_batch_size == spec.batching.max_batch_size
    cfg = PythonModelConfig.from_dict(_as_dict(one))
    for step in (tokenizer, encoder, post):  # each step's parameters, verbatim
        assert {k: one.parameters[k] for k in step.parameters} == dict(step.parameters), step.name
    assert TokenizerParameters.from_config(cfg).task == PostprocessParameters.from_config(cfg).task == spec.task
    engine = OrtEncoderParameters if variant == "cpu" else TorchEncoderParameters
    assert engine.from_config(cfg) == engine.from_config(PythonModelConfig.from_dict(_as_dict(encoder)))
    pipeline = PipelineParameters.from_config(cfg)
    assert pipeline.encoder_inputs == tuple(i.name for i in encoder.input)
    assert pipeline.encoder_output == encoder.output[0].name
    assert set(pipeline.side_inputs) == {i.name for i in post.input} - {pipeline.encoder_output}
    assert set(pipeline.side_inputs) <= {o.name for o in tokenizer.output}


def test_qa_contract_and_windowed_batching(qa_spec):
    ensemble, tokenizer, encoder, post = deployment_configs(as_ensemble(qa_spec, "cpu"), manifest_for(qa_spec), "cpu")
    assert [(i.name, i.data_type, list(i.dims)) for i in ensemble.input] == [
        ("QUESTION", mc.TYPE_STRING, [1]), ("CONTEXT", mc.TYPE_STRING, [1])]
    assert {o.name: (o.data_type, list(o.dims)) for o in ensemble.output} == {
        "ANSWER": (mc.TYPE_STRING, [1]), "SCORE": (mc.TYPE_FP32, [1]), "START": (mc.TYPE_INT32, [1]),
        "END": (mc.TYPE_INT32, [1])}
    assert ensemble.max_batch_size >= 16 and tokenizer.max_batch_size == ensemble.max_batch_size
    # one encoder row per window: the encoder and postprocess take up to max_windows rows
    assert encoder.max_batch_size == post.max_batch_size == qa_spec.windows.max_windows == 128
    assert [list(o.dims) for o in encoder.output] == [[-1, 2]]
    assert encoder.parameters["max_rows_per_run"].string_value == str(qa_spec.batching.max_batch_size)
    params = TokenizerParameters.from_config(PythonModelConfig.from_dict(_as_dict(tokenizer)))
    assert (params.task, params.stride, params.max_windows, params.max_question_length, params.align_to_words) == (
        contract.QUESTION_ANSWERING, 128, 128, 64, True)
    # issue 15's input limits apply to QUESTION + CONTEXT as to TEXT
    assert (params.max_request_text_bytes, params.max_request_texts) == (
        qa_spec.batching.max_request_text_bytes, qa_spec.batching.max_request_texts) == (1_048_576, 64)
    post_params = PostprocessParameters.from_config(PythonModelConfig.from_dict(_as_dict(post)))
    assert (post_params.n_best, post_params.max_answer_length, post_params.handle_impossible_answer) == (1, 15, False)


def test_ner_contract(ner_spec):
    ensemble, tokenizer, encoder, post = deployment_configs(as_ensemble(ner_spec, "cpu"), manifest_for(ner_spec), "cpu")
    assert [(i.name, list(i.dims)) for i in ensemble.input] == [("TEXT", [1])]
    assert [(o.name, o.data_type, list(o.dims)) for o in ensemble.output] == [("ENTITIES", mc.TYPE_STRING, [1])]
    assert [list(o.dims) for o in encoder.output] == [[-1, 9]]
    assert {i.name for i in post.input} == {"logits", "token_spans", "window_item", "item_text", "input_ids"}
    post_params = PostprocessParameters.from_config(PythonModelConfig.from_dict(_as_dict(post)))
    assert (post_params.aggregation_strategy, post_params.tokenizer_file, len(post_params.labels)) == (
        "simple", "tokenizer.json", 9)


def test_existing_deployments_keep_their_configs(sentiment_spec):
    """No windowed parameter leaks into the text-per-row tasks' configs."""
    from tests.unit.test_triton_config import manifest_for as classic

    _, tokenizer, encoder, post = deployment_configs(as_ensemble(sentiment_spec, "cpu"), classic(sentiment_spec), "cpu")
    assert set(tokenizer.parameters) == {"tokenizer_file", "max_sequence_length", "length_buckets", "pad_token_id",
                                         "max_request_text_bytes", "max_request_texts", "tokenizer_threads"}
    assert "max_rows_per_run" not in encoder.parameters and set(post.parameters) == {"task", "labels"}
    [one] = deployment_configs(sentiment_spec, classic(sentiment_spec), "cpu")
    assert set(one.parameters) == (set(tokenizer.parameters) | set(encoder.parameters) | set(post.parameters)
                                   | {"engine_backend", "encoder_inputs", "encoder_output"})


@pytest.mark.parametrize("name, mutate, message", [
    ("qa", lambda d: d["question_answering"].update(doc_stride=400), "doc_stride 400 must lie in"),
    ("qa", lambda d: d["question_answering"].update(max_windows=8), "max_windows \\(8\\) must be >="),
    ("qa", lambda d: d.update(token_classification={}), "does not apply to task"),
    ("ner", lambda d: d["token_classification"].update(aggregation_strategy="longest"), "aggregation_strategy"),
    ("ner", lambda d: d["token_classification"].update(aggregation_strategy="none"), "takes no stride"),
    ("ner", lambda d: d["token_classification"].update(extra=1), "unknown key"),
    ("ner", lambda d: d.update(training={"base_checkpoint": "x", "dataset": "y"}), "keep one"),
])
def test_bad_task_sections_name_the_problem(name, mutate, message):
    data = copy.deepcopy(raw(name))
    mutate(data)
    with pytest.raises(SpecError, match=message):
        parse_spec(data)


def test_task_heads_give_per_token_outputs(qa_checkpoint, ner_checkpoint):
    import torch

    from trtserve_build.models.heads import task_module
    from trtserve_build.models.loader import load_task_model

    ids = torch.tensor([[101, 2054, 2003, 102, 2009, 102]])
    mask = torch.ones_like(ids)
    qa = task_module(load_task_model(qa_checkpoint, contract.QUESTION_ANSWERING), contract.QUESTION_ANSWERING)
    ner = task_module(load_task_model(ner_checkpoint, contract.TOKEN_CLASSIFICATION), contract.TOKEN_CLASSIFICATION)
    with torch.no_grad():
        assert qa(ids, mask, torch.zeros_like(ids)).shape == (1, 6, 2)
        assert ner(ids, mask, torch.zeros_like(ids)).shape == (1, 6, 9)


def _as_dict(config):
    from google.protobuf.json_format import MessageToDict

    return MessageToDict(config, preserving_proto_field_name=True)
