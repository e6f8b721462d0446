"""Precision modes of the ``qa`` and ``ner`` deployments: the fidelity report's task metric
(answer / entity agreement with FP32 through the served windows and postprocess) and
TensorRT-RTX plans of their graphs (built on the CPU; running a plan needs a GPU).
"""
from __future__ import annotations

import json

import pytest

import trtserve_contract as contract

pytestmark = pytest.mark.slow

#: Items per report here (the committed report runs 220); the first QA pairs include contexts of
#: several windows.
ITEMS = 32
VARIANTS = ("fp16", "hybrid", "int8")
#: Plans built here: every precision but the gpu variant's default, which test_qa_ner_gpu builds.
PLAN_PRECISIONS = ("fp32", "fp16", "int8")


@pytest.fixture(scope="module", params=["qa", "ner"])
def windowed_report(request, qa_spec, ner_spec):
    from trtserve_build.pipeline.validate import run_deployment

    spec = {"qa": qa_spec, "ner": ner_spec}[request.param]
    return spec, run_deployment(spec, VARIANTS, samples=ITEMS)


def test_report_scores_every_precision_against_fp32_on_windows(windowed_report, tmp_path):
    from trtserve_build.stages.fidelity import raise_for, write_report

    spec, report = windowed_report
    rows = {r.precision: r for r in report.rows}
    assert set(rows) == {"fp32", *VARIANTS}
    reference = rows["fp32"]
    assert reference.task_agreement == 1.0 and reference.cosine_min == pytest.approx(1.0)
    assert "onnxruntime-cpu" in reference.executor
    for precision in VARIANTS:
        r = rows[precision]
        assert r.texts == ITEMS and r.windows == reference.windows, r
        assert r.nonfinite_fraction == 0.0, r
        assert 0.0 <= r.task_agreement <= 1.0 and r.cosine_min is not None
        if spec.task == contract.QUESTION_ANSWERING:
            assert r.max_score_diff is not None and r.entity_f1 is None
            assert 0 <= r.pool_ties <= round((1 - r.task_agreement) * ITEMS), r
        else:
            assert 0.0 <= r.entity_f1 <= 1.0 and r.max_score_diff is None
    if spec.task == contract.QUESTION_ANSWERING:
        assert reference.windows > ITEMS + 8  # long contexts: several windows each
    # fp16 and hybrid pass the spec's gates (>= 98% of the answers, entity F1 >= 0.99 by default);
    # int8 is reported
    gated = [g for g in report.gates if g.precision in ("fp16", "hybrid")]
    raise_for(gated)
    gate = spec.precision.gate("hybrid")
    if spec.task == contract.QUESTION_ANSWERING:  # equal answers and pool ties (stages/fidelity.py)
        assert rows["hybrid"].answers_agreeing >= gate.min_answer_agreement
    else:
        assert rows["hybrid"].entity_f1 >= gate.min_entity_f1
    data = write_report([report], tmp_path / "fidelity.json", tmp_path / "fidelity.md")
    md = (tmp_path / "fidelity.md").read_text()
    assert f"| {spec.name} | hybrid | real | {ITEMS} | {reference.windows} |" in md
    assert data["deployments"][0]["rows"][1]["task_agreement"] is not None


def test_a_strict_gate_fails_the_build_with_the_numbers(windowed_report):
    """A gate the measured agreement misses stops with a ToleranceError that names it."""
    import dataclasses

    from trtserve_build.core.errors import ToleranceError
    from trtserve_build.stages.fidelity import evaluate_gate, raise_for

    spec, report = windowed_report
    qa = spec.task == contract.QUESTION_ANSWERING

    def metric(r):  # what the gate reads: QA counts pool ties as agreeing (stages/fidelity.py)
        return r.answers_agreeing if qa else r.entity_f1

    worst = min((r for r in report.rows if r.precision != "fp32"), key=metric)
    if metric(worst) == 1.0:
        pytest.skip("every precision agrees with FP32 on every item: no threshold can fail")
    key = "min_answer_agreement" if qa else "min_entity_f1"
    gate = dataclasses.replace(spec.precision.gate(worst.precision), **{key: 1.0})
    result = evaluate_gate(spec.name, worst.precision, [worst], gate)
    with pytest.raises(ToleranceError, match=f"{spec.name}/{worst.precision}/real: .*{key}"):
        raise_for([result])


@pytest.mark.parametrize("name", ["qa", "ner"])
@pytest.mark.parametrize("precision", PLAN_PRECISIONS)
def test_builds_tensorrt_rtx_plan(name, precision, qa_spec, ner_spec, tmp_path):
    """Each precision's graph of qa / ner becomes a TensorRT-RTX plan whose profile holds a
    request of max_windows rows (hybrid, the gpu variant's default: test_qa_ner_gpu builds the gpu
    repository's plans)."""
    pytest.importorskip("tensorrt_rtx")
    from trtserve_build.pipeline.steps import export, precision_graph
    from trtserve_build.runtime.tensorrt import import_flavour
    from trtserve_build.stages.tensorrt import build_plan

    spec = {"qa": qa_spec, "ner": ner_spec}[name]
    export(spec)
    path = precision_graph(spec, precision)
    record = build_plan(path, tmp_path / f"{precision}.plan", spec, precision, flavour=import_flavour("tensorrt_rtx"))
    assert record.precision == precision and record.strongly_typed
    assert record.plan_bytes > 5_000_000 and (tmp_path / f"{precision}.plan").stat().st_size == record.plan_bytes
    assert record.inputs == list(contract.ENCODER_INPUTS) and record.outputs == [contract.LOGITS]
    rows, length = spec.windows.max_windows, spec.model.max_sequence_length
    assert f"[{rows}, {length}]" in json.dumps(record.profiles), record.profiles
