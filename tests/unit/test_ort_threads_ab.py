"""bench/ort_threads_ab.py: the variants it builds are the spec with its engine threading keys changed."""
from __future__ import annotations

import tomllib

import pytest

from bench.ort_threads_ab import SPEC, default_variants, parse_variant, variant_spec
from trtserve_build.core.instances import host_sized, thread_spinning
from trtserve_build.core.spec import parse_spec


def test_variant_spec_changes_only_the_cpu_engines_threading():
    original = tomllib.loads(SPEC.read_text())
    _, keys = parse_variant("all:2:16:false")
    changed = tomllib.loads(variant_spec(SPEC.read_text(), keys))
    assert changed["engine"]["cpu"] == {**original["engine"]["cpu"], "instance_count": 2, "intra_op_threads": 16,
                                        "thread_spinning": False}
    assert {k: v for k, v in changed.items() if k != "engine"} == {k: v for k, v in original.items() if k != "engine"}
    assert {k: v for k, v in changed["engine"].items() if k != "cpu"} == \
        {k: v for k, v in original["engine"].items() if k != "cpu"}
    spec = parse_spec(changed)  # a valid spec
    assert spec.engine("cpu").thread_spinning is False and spec.engine("cpu").intra_op_threads == 16


def test_a_variant_may_set_the_hot_instances_threads():
    name, keys = parse_variant("hot:2:1:true:2:false")
    spec = parse_spec(tomllib.loads(variant_spec(SPEC.read_text(), keys)))
    assert name == "hot"
    assert host_sized(spec, "cpu", "intra_op_threads", 2) == 1 and thread_spinning(spec, "cpu", 2) is True
    assert host_sized(spec, "cpu", "hot_intra_op_threads", 2) == 2
    assert thread_spinning(spec, "cpu", 2, hot=True) is False
    with pytest.raises(ValueError, match="name:instances:threads:spinning"):
        parse_variant("x:2:1")
    with pytest.raises(ValueError, match="solo_threads"):
        parse_variant("x:2:1:true:1:true:2:extra")
    # the solo session: 0 turns it off (the hot instance's threads are then the old "auto")
    _, keys = parse_variant("nosolo:auto:auto:auto:auto:auto:0")
    spec = parse_spec(tomllib.loads(variant_spec(SPEC.read_text(), keys)))
    assert host_sized(spec, "cpu", "solo_intra_op_threads", 2) == 0
    assert host_sized(spec, "cpu", "hot_intra_op_threads", 2) == 2


def test_default_variants_on_16_and_2_cores():
    assert default_variants(16) == "split:2:8:true:8:true:0,auto:auto:auto:auto,one:1:16:true"
    assert default_variants(2) == "split:2:1:true:1:true:0,auto:auto:auto:auto,one:1:2:true"
    # "auto" is written as a TOML string: the variant is the shipped default, hot keys included
    _, keys = parse_variant("auto:auto:auto:auto")
    spec = parse_spec(tomllib.loads(variant_spec(SPEC.read_text(), keys)))
    engine = spec.engine("cpu")
    assert (engine.instance_count, engine.intra_op_threads, engine.thread_spinning) == ("auto",) * 3
    assert (engine.hot_intra_op_threads, engine.hot_thread_spinning, engine.solo_intra_op_threads) == ("auto",) * 3
