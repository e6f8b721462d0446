"""Generated configs: protobuf-built, round-trip through text_format, agree with the contract."""
import json
import os

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

import trtserve_contract as contract
from trtserve_build.core.instances import has_hot_instance, host_sized, thread_spinning
from trtserve_build.core.records import ExportManifest
from trtserve_build.core.pbtxt import read_config, to_text, write_config
from trtserve_build.stages.triton_config import deployment_configs


def manifest_for(spec, hidden=384):
    return ExportManifest(
        name=spec.name, task=spec.task, fingerprint="f", checkpoint="c",
        inputs=contract.ENCODER_INPUTS,
        output=contract.LOGITS if spec.task == contract.CLASSIFICATION else contract.POOLED,
        hidden_size=hidden, num_labels=len(spec.model.labels), labels=spec.model.labels,
        pad_token_id=0, opset=17, onnx_sha256="0", max_abs_diff=0.0, min_cosine=1.0, checked_texts=1, seconds=0.0,
    )


def with_engine(spec, variant, **changes):
    """``spec`` with ``[engine.<variant>]`` changed (e.g. topology="ensemble")."""
    import dataclasses

    engine = dataclasses.replace(spec.engine(variant), **changes)
    return dataclasses.replace(spec, engines={**spec.engines, variant: engine})


@pytest.mark.parametrize("variant, topology", [("cpu", "auto"), ("cpu", "ensemble"), ("gpu", "auto"),
                                               ("gpu_torch", "auto"), ("gpu_torch", "ensemble")])
def test_round_trip(sentiment_spec, tmp_path, variant, topology):
    spec = with_engine(sentiment_spec, variant, topology=topology)
    for config in deployment_configs(spec, manifest_for(spec), variant):
        path = tmp_path / f"{config.name}.pbtxt"
        write_config(config, path)
        assert read_config(path) == config


def test_sentiment_contract(sentiment_spec):
    spec = with_engine(sentiment_spec, "cpu", topology="ensemble")
    ensemble, tokenizer, encoder, post = deployment_configs(spec, manifest_for(spec), "cpu")
    assert ensemble.platform == "ensemble" and ensemble.max_batch_size >= 64
    (text,) = ensemble.input
    assert (text.name, text.data_type, list(text.dims)) == ("TEXT", mc.TYPE_STRING, [1])
    outs = {o.name: (o.data_type, list(o.dims)) for o in ensemble.output}
    assert outs == {"LABEL": (mc.TYPE_STRING, [1]), "SCORE": (mc.TYPE_FP32, [1]), "PROBABILITIES": (mc.TYPE_FP32, [2])}
    assert [s.model_name for s in ensemble.ensemble_scheduling.step] == [
        "sentiment_tokenizer", "sentiment_encoder", "sentiment_postprocess"]
    assert encoder.dynamic_batching.preferred_batch_size == [8, 16, 32, 64]
    assert encoder.backend == "python" and encoder.parameters["onnx_file"].string_value == "model.onnx"
    assert encoder.parameters["merge_lengths"].string_value == "group"
    assert all(t.allow_ragged_batch for t in encoder.input)
    assert json.loads(tokenizer.parameters["length_buckets"].string_value) == list(sentiment_spec.model.length_buckets)
    assert post.parameters["labels"].string_value == '["negative", "positive"]'


def test_ensemble_wiring_is_closed(embed_spec):
    """Every step input is produced by the ensemble input or an earlier step; every output is produced."""
    spec = with_engine(embed_spec, "cpu", topology="ensemble")
    ensemble, *members = deployment_configs(spec, manifest_for(spec), "cpu")
    by_name = {m.name: m for m in members}
    available = {i.name for i in ensemble.input}
    for step in ensemble.ensemble_scheduling.step:
        member = by_name[step.model_name]
        assert set(step.input_map) == {i.name for i in member.input}
        assert set(step.input_map.values()) <= available
        assert set(step.output_map) == {o.name for o in member.output}
        available |= set(step.output_map.values())
    assert {o.name for o in ensemble.output} <= available
    assert {o.name: list(o.dims) for o in ensemble.output} == {"EMBEDDING": [384]}


def test_gpu_encoder_is_a_tensorrt_plan(embed_spec):
    encoder = deployment_configs(embed_spec, manifest_for(embed_spec), "gpu")[2]
    assert encoder.platform == "tensorrt_plan" and encoder.default_model_filename == "model.plan"
    assert encoder.instance_group[0].kind == mc.ModelInstanceGroup.KIND_GPU
    assert not encoder.backend


def test_unknown_fields_are_rejected(tmp_path):
    path = tmp_path / "config.pbtxt"
    path.write_text('name: "x"\nmax_batch_sise: 4\n')
    with pytest.raises(text_format.ParseError, match="max_batch_sise"):
        read_config(path)


def test_text_is_stable(embed_spec):
    m = manifest_for(embed_spec)
    assert [to_text(c) for c in deployment_configs(embed_spec, m, "cpu")] == [
        to_text(c) for c in deployment_configs(embed_spec, m, "cpu")]


def test_step_instances_come_from_the_variant(sentiment_spec):
    """Tokenizer and postprocess instances are per variant: a big GPU host gets more of them."""
    import dataclasses

    gpu = dataclasses.replace(sentiment_spec.engine("gpu"), tokenizer_instances=4, postprocess_instances=3)
    spec = dataclasses.replace(sentiment_spec, engines={**sentiment_spec.engines, "gpu": gpu})
    _, tokenizer, encoder, post = deployment_configs(spec, manifest_for(spec), "gpu")
    assert [(g.kind, g.count) for g in tokenizer.instance_group] == [(mc.ModelInstanceGroup.KIND_CPU, 4)]
    assert [(g.kind, g.count) for g in post.instance_group] == [(mc.ModelInstanceGroup.KIND_CPU, 3)]
    spec = with_engine(spec, "cpu", topology="ensemble")
    _, tokenizer, _, post = deployment_configs(spec, manifest_for(spec), "cpu")
    assert tokenizer.instance_group[0].count == 1 and post.instance_group[0].count == 1


@pytest.mark.parametrize("variant", ["cpu", "gpu_torch"])
@pytest.mark.parametrize("count", [1, 2, 8])
def test_one_model_deployments_keep_one_preferred_instance(sentiment_spec, variant, count):
    """The one model's instances: one of rate-limiter priority 1 and a pool of the rest at 1e6
    (Triton under --rate-limit=execution_count then keeps an idle server on the warm instance);
    a single instance needs no priority."""
    (single,) = deployment_configs(with_engine(sentiment_spec, variant, instance_count=count),
                                   manifest_for(sentiment_spec), variant)
    groups = [(g.name, g.count, g.rate_limiter.priority) for g in single.instance_group]
    if count == 1:
        assert groups == [("", 1, 0)] and not single.instance_group[0].HasField("rate_limiter")
    else:
        assert groups == [("sentiment_hot", 1, 1), ("sentiment_pool", count - 1, 1_000_000)]
    assert sum(g.count for g in single.instance_group) == count
    assert len({g.kind for g in single.instance_group}) == 1


@pytest.mark.parametrize("variant, kind, engine_file", [
    ("cpu", mc.ModelInstanceGroup.KIND_CPU, ("onnx_file", "model.onnx")),
    # sentiment's gpu_torch engine is the fused encoder, traced (engine_format "fused")
    ("gpu_torch", mc.ModelInstanceGroup.KIND_GPU, ("torchscript_file", "model.pt")),
])
def test_python_engines_are_served_as_one_model_with_the_same_contract(sentiment_spec, variant, kind, engine_file):
    """Topology "auto": where the engine runs in Python, the deployment is one Python model with
    the ensemble's name, input, outputs and batching, and the three steps' parameters."""
    m = manifest_for(sentiment_spec)
    (single,) = deployment_configs(sentiment_spec, m, variant)
    ensemble = deployment_configs(with_engine(sentiment_spec, variant, topology="ensemble"), m, variant)[0]
    assert single.name == ensemble.name == "sentiment" and single.backend == "python" and not single.platform
    assert list(single.input) == list(ensemble.input) and list(single.output) == list(ensemble.output)
    assert single.max_batch_size == ensemble.max_batch_size
    assert {g.kind for g in single.instance_group} == {kind}
    p = {k: v.string_value for k, v in single.parameters.items()}
    assert p[engine_file[0]] == engine_file[1] and p["tokenizer_file"] == "tokenizer.json"
    assert json.loads(p["encoder_inputs"]) == list(contract.ENCODER_INPUTS) and p["encoder_output"] == "logits"
    assert p["task"] == "classification" and json.loads(p["labels"]) == ["negative", "positive"]
    assert p["engine_backend"] == sentiment_spec.engine(variant).backend
    assert p.get("full_rows_file", "") == ("model-full.pt" if variant == "gpu_torch" else "")
    # the door of the deployment keeps the bounded queue
    assert single.dynamic_batching.default_queue_policy.max_queue_size == sentiment_spec.batching.max_queue_size


def test_tensorrt_stays_an_ensemble(sentiment_spec):
    assert sentiment_spec.topology("gpu") == "ensemble"
    assert len(deployment_configs(sentiment_spec, manifest_for(sentiment_spec), "gpu")) == 4


@pytest.mark.parametrize("cores, expected", [
    # (one model on the GPU, ONNX Runtime instances, ORT threads, tokenizer instances)
    (2, (1, 2, 1, 1)), (16, (8, 2, 8, 4)), (64, (8, 4, 16, 8)),
])
def test_auto_instances_are_sized_from_the_host_cores(sentiment_spec, cores, expected):
    spec = with_engine(with_engine(sentiment_spec, "gpu_torch", instance_count="auto"), "cpu",
                       instance_count="auto", intra_op_threads="auto")
    spec = with_engine(spec, "gpu", tokenizer_instances="auto")
    got = (host_sized(spec, "gpu_torch", "instance_count", cores), host_sized(spec, "cpu", "instance_count", cores),
           host_sized(spec, "cpu", "intra_op_threads", cores), host_sized(spec, "gpu", "tokenizer_instances", cores))
    assert got == expected
    assert host_sized(with_engine(spec, "cpu", instance_count=3), "cpu", "instance_count", cores) == 3


@pytest.mark.parametrize("engine, cores, spinning", [
    # "auto" instances x "auto" threads fill the cores exactly: spin (as before this knob)
    (dict(instance_count="auto", intra_op_threads="auto"), 16, True),
    # on 2 cores too: the hot instance runs its pool share (1 thread) beside the pool, every core
    # only alone (its solo session, which always spins)
    (dict(instance_count="auto", intra_op_threads="auto"), 2, True),
    # ... but without a solo session the hot instance takes both cores beside the pool's one
    # thread: 3 threads on 2 cores, so none spins (the pool's single thread has no workers anyway)
    (dict(instance_count="auto", intra_op_threads="auto", solo_intra_op_threads=0), 2, False),
    (dict(instance_count="auto", intra_op_threads="auto", hot_intra_op_threads=1), 2, True),
    # every instance with all cores: their threads share cores, so they sleep between ops
    (dict(instance_count="auto", intra_op_threads=16), 16, False),
    (dict(instance_count=2, intra_op_threads=2), 2, False),
    (dict(instance_count=2, intra_op_threads=2), 2, False),
    # one instance with ONNX Runtime's default threads (one per core): spin
    (dict(instance_count=1, intra_op_threads=0), 8, True),
    (dict(instance_count=2, intra_op_threads=0), 8, False),
    # set explicitly: as set
    (dict(instance_count=2, intra_op_threads=16, thread_spinning=True), 16, True),
    (dict(instance_count=1, intra_op_threads=1, thread_spinning=False), 16, False),
])
def test_thread_spinning_auto_spins_only_where_the_threads_fit_the_cores(sentiment_spec, engine, cores, spinning):
    assert thread_spinning(with_engine(sentiment_spec, "cpu", **engine), "cpu", cores) is spinning
    # "auto" for the hot instance too: one rule (all the instances' threads fit the cores), and
    # without a hot instance (count 1) the instance's own setting
    if "thread_spinning" not in engine or engine["instance_count"] == 1:
        assert thread_spinning(with_engine(sentiment_spec, "cpu", **engine), "cpu", cores, hot=True) is spinning


@pytest.mark.parametrize("engine, cores, spinning", [
    # set for the hot instance alone: as set, the pool keeps its "auto"
    (dict(instance_count="auto", intra_op_threads="auto", solo_intra_op_threads=0, hot_thread_spinning=True), 2,
     (False, True)),
    (dict(instance_count="auto", intra_op_threads="auto", hot_thread_spinning=False), 16, (True, False)),
    # the hot instance on all 16 cores beside a pool of 8-thread instances: 24 threads, none spins
    (dict(instance_count="auto", intra_op_threads="auto", hot_intra_op_threads=16), 16, (False, False)),
    # thread_spinning set: the pool's only
    (dict(instance_count=2, intra_op_threads=1, solo_intra_op_threads=0, thread_spinning=True), 2, (True, False)),
])
def test_hot_thread_spinning_is_the_hot_instances_own(sentiment_spec, engine, cores, spinning):
    spec = with_engine(sentiment_spec, "cpu", **engine)
    assert (thread_spinning(spec, "cpu", cores), thread_spinning(spec, "cpu", cores, hot=True)) == spinning


def test_thread_spinning_is_written_to_the_one_models_config(sentiment_spec):
    spec = with_engine(sentiment_spec, "cpu", instance_count=2, intra_op_threads=4096)
    single = deployment_configs(spec, manifest_for(spec), "cpu")[0]
    p = {k: v.string_value for k, v in single.parameters.items()}
    assert p["intra_op_threads"] == "4096" and p["thread_spinning"] == "false"
    p = {k: v.string_value for k, v in deployment_configs(with_engine(spec, "cpu", thread_spinning=True),
                                                          manifest_for(spec), "cpu")[0].parameters.items()}
    assert p["thread_spinning"] == "true"


@pytest.mark.parametrize("cores, pool, hot", [(2, 1, 2), (3, 1, 3), (4, 2, 2), (16, 8, 8), (64, 16, 16)])
def test_auto_hot_instance_threads(sentiment_spec, cores, pool, hot):
    """The preferred instance (the one a lone request runs on) runs on every core, spinning, while
    it is alone (solo), and on the pool's count beside a busy pool. Without a solo session it gets
    every core's thread where the pool's instances run one thread each (measured on 2 cores);
    elsewhere the pool's count (16 sleeping threads lost c=1 against 8 spinning on 16 cores:
    core.instances.host_sized)."""
    spec = with_engine(sentiment_spec, "cpu", instance_count="auto", intra_op_threads="auto",
                       hot_intra_op_threads="auto")
    assert has_hot_instance(spec, "cpu", cores)
    assert host_sized(spec, "cpu", "intra_op_threads", cores) == pool
    assert host_sized(spec, "cpu", "solo_intra_op_threads", cores) == cores
    assert host_sized(spec, "cpu", "hot_intra_op_threads", cores) == pool
    assert host_sized(with_engine(spec, "cpu", hot_intra_op_threads=3), "cpu", "hot_intra_op_threads", cores) == 3
    no_solo = with_engine(spec, "cpu", solo_intra_op_threads=0)
    assert host_sized(no_solo, "cpu", "hot_intra_op_threads", cores) == hot
    # single-threaded pool instances set by hand: the hot one still gets every core
    assert host_sized(with_engine(no_solo, "cpu", intra_op_threads=1), "cpu", "hot_intra_op_threads", cores) == cores
    # pool instances on every core already (0: ONNX Runtime's default): no solo session
    assert host_sized(with_engine(spec, "cpu", intra_op_threads=0), "cpu", "solo_intra_op_threads", cores) == 0


@pytest.mark.parametrize("changes", [dict(instance_count=1), dict(topology="ensemble")])
def test_without_a_hot_instance_the_hot_threads_are_the_pools(sentiment_spec, changes):
    """One instance (no preferred group) or an ensemble (its encoder has no hot instance): "auto"
    gives the instance(s) the threads they have anyway."""
    spec = with_engine(sentiment_spec, "cpu", intra_op_threads="auto", hot_intra_op_threads="auto", **changes)
    assert not has_hot_instance(spec, "cpu", 16)
    assert host_sized(spec, "cpu", "hot_intra_op_threads", 16) == host_sized(spec, "cpu", "intra_op_threads", 16)
    assert thread_spinning(spec, "cpu", 16, hot=True) is thread_spinning(spec, "cpu", 16)
    assert host_sized(spec, "cpu", "solo_intra_op_threads", 16) == 0


def test_hot_threads_are_written_to_the_one_models_config_only(sentiment_spec):
    spec = with_engine(sentiment_spec, "cpu", instance_count=2, intra_op_threads=1, hot_intra_op_threads=7,
                       hot_thread_spinning=False, thread_spinning=True)
    (single,) = deployment_configs(spec, manifest_for(spec), "cpu")
    p = {k: v.string_value for k, v in single.parameters.items()}
    assert (p["intra_op_threads"], p["thread_spinning"]) == ("1", "true")
    assert (p["hot_intra_op_threads"], p["hot_thread_spinning"]) == ("7", "false")
    assert p["solo_intra_op_threads"] == str(os.cpu_count())  # "auto": every core of this host
    p = {k: v.string_value for k, v in deployment_configs(with_engine(spec, "cpu", solo_intra_op_threads=5),
                                                          manifest_for(spec), "cpu")[0].parameters.items()}
    assert p["solo_intra_op_threads"] == "5"
    # the ensemble's encoder has no preferred instance: its "auto" hot values are its own
    spec = with_engine(spec, "cpu", topology="ensemble", hot_intra_op_threads="auto", hot_thread_spinning="auto")
    encoder = next(c for c in deployment_configs(spec, manifest_for(spec), "cpu") if c.name == spec.encoder_model)
    p = {k: v.string_value for k, v in encoder.parameters.items()}
    assert (p["hot_intra_op_threads"], p["hot_thread_spinning"]) == (p["intra_op_threads"], p["thread_spinning"])
    assert p["solo_intra_op_threads"] == "0"
