"""The architecture matrix: BERT, RoBERTa, DistilBERT, ELECTRA, XLM-RoBERTa, DeBERTa-v2 and MPNet.

Each architecture (a tiny seeded checkpoint with a tokenizer built from local sources) goes
through every stage for classification and embedding: export checked against PyTorch, the
fp16/hybrid/int8 graphs with their fidelity gate, TensorRT-RTX plans, ONE generated cpu
repository served by ONE real Triton server, whose outputs must equal PyTorch's within the
export tolerance on real text and must not depend on what a text was batched with.
"""
from __future__ import annotations

import pytest

from trtserve_build.core import architectures as A

from bench.arch_matrix import PRECISIONS, TASKS, deployment_name, run_matrix

pytestmark = pytest.mark.slow

CASES = [(a, t) for a in A.ARCHITECTURES for t in TASKS]
IDS = [f"{a}-{t}" for a, t in CASES]
#: The export tolerance (spec [export] atol), applied to the served (softmax/normalised) outputs.
ATOL = 1e-4
#: Same text, different batch-mates (padding to another bucket, merged requests).
BATCH_ATOL = 1e-5


@pytest.fixture(scope="module")
def matrix(tmp_path_factory):
    records = run_matrix(workdir=tmp_path_factory.mktemp("architectures"))
    return {r["deployment"]: r for r in records}


def _record(matrix, arch, task, stage):
    rec = matrix[deployment_name(arch, task)]
    assert stage in rec, f"{arch}/{task}: stage {stage} did not run ({sorted(rec)})"
    result = rec[stage]
    assert result["ok"], f"{arch}/{task} {stage}: {result.get('error')}"
    return result


@pytest.mark.parametrize("arch,task", CASES, ids=IDS)
def test_export_takes_exactly_the_architectures_inputs_and_matches_pytorch(matrix, arch, task):
    result = _record(matrix, arch, task, "export")
    assert tuple(result["inputs"]) == A.get_architecture(arch).inputs
    assert result["max_abs_diff"] <= ATOL and result["min_cosine"] >= 0.99999, result


@pytest.mark.parametrize("arch,task", CASES, ids=IDS)
@pytest.mark.parametrize("precision", PRECISIONS)
def test_every_precision_builds_a_tensorrt_rtx_plan_and_passes_its_gate(matrix, arch, task, precision):
    """The pipeline's gpu engine build: precision graph, TensorRT-RTX plan, fidelity gate."""
    result = _record(matrix, arch, task, precision)
    assert result["plan_bytes"] > 0 and result["tensorrt"].startswith("tensorrt")
    if precision != "fp32":
        for text_set in ("real", "stress"):
            assert result[text_set]["nonfinite_fraction"] == 0.0, result
            assert result[text_set]["cosine_min"] > 0.99, result


@pytest.mark.parametrize("arch,task", CASES, ids=IDS)
def test_generated_configs_declare_exactly_the_encoder_inputs(matrix, arch, task):
    result = _record(matrix, arch, task, "repository")
    inputs = list(A.get_architecture(arch).inputs)
    assert result["pipeline_encoder_inputs"] == inputs  # the one model (served)
    assert result["tokenizer_outputs"] == inputs  # the ensemble's steps
    assert result["encoder_inputs"] == inputs
    assert sorted(result["ensemble_step_inputs"]) == sorted(inputs)


@pytest.mark.parametrize("arch,task", CASES, ids=IDS)
def test_served_outputs_equal_pytorch_and_are_batch_invariant(matrix, arch, task):
    result = _record(matrix, arch, task, "served")
    assert result["max_abs_diff_vs_pytorch"] <= ATOL, result
    assert result["batch_invariance_max_abs_diff"] <= BATCH_ATOL, result
