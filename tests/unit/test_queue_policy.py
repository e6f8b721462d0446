"""Bounded queues from [batching]: spec fields, validation, and the generated Triton configs."""
import copy
import dataclasses
import tomllib

import pytest
from tritonclient.grpc import model_config_pb2 as mc

from trtserve_build.core.spec import SpecError, parse_spec
from trtserve_build.core.pbtxt import read_config, write_config
from trtserve_build.stages.triton_config import deployment_configs, queue_policy

from ..conftest import DEPLOYMENTS
from .test_triton_config import manifest_for, with_engine


def _raw(name):
    with open(DEPLOYMENTS / f"{name}.toml", "rb") as f:
        return tomllib.load(f)


@pytest.mark.parametrize("name", ["sentiment", "embed"])
def test_shipped_specs_bound_their_queues(name):
    spec = parse_spec(_raw(name))
    assert 0 < spec.batching.max_queue_size
    assert spec.batching.queue_timeout_microseconds > spec.batching.max_queue_delay_microseconds


@pytest.mark.parametrize("variant", ["cpu", "gpu"])
def test_policy_is_on_the_entry_models_only(sentiment_spec, variant, tmp_path):
    spec = with_engine(sentiment_spec, variant, topology="ensemble")
    ensemble, tokenizer, encoder, post = deployment_configs(spec, manifest_for(spec), variant)
    b = sentiment_spec.batching
    for config in (tokenizer, encoder):
        policy = config.dynamic_batching.default_queue_policy
        assert policy.max_queue_size == b.max_queue_size
        assert policy.default_timeout_microseconds == b.queue_timeout_microseconds
        assert policy.timeout_action == mc.ModelQueuePolicy.REJECT
        assert not policy.allow_timeout_override
        path = tmp_path / f"{config.name}.pbtxt"
        write_config(config, path)
        assert read_config(path).dynamic_batching.default_queue_policy == policy
    # A request that got through the encoder is not dropped at the last step.
    assert not post.dynamic_batching.HasField("default_queue_policy")
    assert not ensemble.HasField("dynamic_batching")


def test_zero_means_triton_default(sentiment_spec):
    unbounded = dataclasses.replace(
        sentiment_spec, batching=dataclasses.replace(sentiment_spec.batching, max_queue_size=0, queue_timeout_microseconds=0))
    assert queue_policy(unbounded) is None
    _, tokenizer, encoder, _ = deployment_configs(with_engine(unbounded, "cpu", topology="ensemble"),
                                                  manifest_for(unbounded), "cpu")
    assert not tokenizer.dynamic_batching.HasField("default_queue_policy")
    assert not encoder.dynamic_batching.HasField("default_queue_policy")
    (single,) = deployment_configs(unbounded, manifest_for(unbounded), "cpu")
    assert not single.dynamic_batching.HasField("default_queue_policy")


def test_defaults_are_bounded():
    raw = _raw("embed")
    for key in ("max_queue_size", "queue_timeout_microseconds"):
        raw["batching"].pop(key)
    spec = parse_spec(raw)
    assert spec.batching.max_queue_size > 0 and spec.batching.queue_timeout_microseconds > 0


@pytest.mark.parametrize("change, message", [
    ({"max_queue_size": -1}, "max_queue_size must be >= 0"),
    ({"queue_timeout_microseconds": -5}, "queue_timeout_microseconds must be >= 0"),
    ({"max_queue_delay_microseconds": 5000, "queue_timeout_microseconds": 4000}, "must exceed"),
    ({"max_queue_sise": 4}, "unknown key.*max_queue_sise"),
])
def test_invalid_queue_settings_name_the_problem(change, message):
    raw = copy.deepcopy(_raw("embed"))
    raw["batching"].update(change)
    with pytest.raises(SpecError, match=message):
        parse_spec(raw)
