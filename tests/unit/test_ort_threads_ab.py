"""bench/ort_threads_ab.py: the variants it builds are the spec with three engine keys changed."""
from __future__ import annotations

import tomllib

from bench.ort_threads_ab import SPEC, default_variants, variant_spec
from trtserve_build.core.spec import parse_spec


def test_variant_spec_changes_only_the_cpu_engines_threading():
    original = tomllib.loads(SPEC.read_text())
    changed = tomllib.loads(variant_spec(SPEC.read_text(), "2", "16", "false"))
    assert changed["engine"]["cpu"] == {**original["engine"]["cpu"], "instance_count": 2, "intra_op_threads": 16,
                                        "thread_spinning": False}
    assert {k: v for k, v in changed.items() if k != "engine"} == {k: v for k, v in original.items() if k != "engine"}
    assert {k: v for k, v in changed["engine"].items() if k != "cpu"} == \
        {k: v for k, v in original["engine"].items() if k != "cpu"}
    spec = parse_spec(changed)  # a valid spec
    assert spec.engine("cpu").thread_spinning is False and spec.engine("cpu").intra_op_threads == 16


def test_default_variants_on_16_and_2_cores():
    assert default_variants(16) == "split:2:8:true,all:2:16:false,one:1:16:true"
    assert default_variants(2) == "split:2:1:true,all:2:2:false,one:1:2:true"
