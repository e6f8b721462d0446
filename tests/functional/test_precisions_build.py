"""All four precisions of the real MiniLM ``embed`` encoder: transform, validate, execute, build.

Each precision's graph is made from the real export, checked (full ONNX check, no duplicated
casts, the ensemble contract), executed on real text (ONNX Runtime where it has kernels in the
graph's types, the FP16-faithful interpreter otherwise), built into a TensorRT-RTX plan through
``engine_trt.build_plan``, gated by the fidelity report, and served by a generated cpu
repository whose encoder config is unchanged.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import trtserve_contract as contract

pytestmark = pytest.mark.slow

PRECISIONS = ("fp32", "fp16", "hybrid", "int8")
#: Minimum cosine to FP32 on real text, per precision (int8 is W8A8 with per-tensor activations).
MIN_COSINE = {"fp32": 0.99999, "fp16": 0.9998, "hybrid": 0.9998, "int8": 0.8}


@pytest.fixture(scope="module")
def embed(embed_spec):
    """The embed spec with a small fidelity sample, its export (cached) and real texts."""
    from trtserve_build.data.datasets import corpus_texts
    from trtserve_build.pipeline.steps import export

    spec = dataclasses.replace(embed_spec, precision=dataclasses.replace(embed_spec.precision, fidelity_samples=48))
    export(spec)
    texts = corpus_texts(limit=48) + [" ".join(corpus_texts(limit=60)), "", "😀🎬🍿 " * 50]
    return spec, texts


@pytest.fixture(scope="module")
def fp32_outputs(embed):
    from trtserve_build.core.paths import precision_onnx_path
    from trtserve_build.data.tokenizer import spec_encoder
    from trtserve_build.pipeline.validate import Runner
    from trtserve_build.runtime.onnxruntime import OrtExecutor

    spec, texts = embed
    return Runner(OrtExecutor(precision_onnx_path(spec, "fp32")), spec_encoder(spec)).outputs(texts)


@pytest.mark.parametrize("precision", PRECISIONS)
def test_transform_validate_and_execute(embed, fp32_outputs, precision):
    import onnx

    from trtserve_build.data.tokenizer import spec_encoder
    from trtserve_build.graph.onnx_graph import check_casts
    from trtserve_build.pipeline.steps import precision_graph
    from trtserve_build.pipeline.validate import Runner, choose_executor
    from trtserve_build.runtime.onnxruntime import ort_upcast_ops
    from trtserve_build.stages.fidelity import compare

    spec, texts = embed
    path = precision_graph(spec, precision)
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    check_casts(model)
    assert model.ir_version <= 13
    assert [(i.name, i.type.tensor_type.elem_type) for i in model.graph.input] == [
        (n, onnx.TensorProto.INT64) for n in contract.ENCODER_INPUTS]
    assert [(o.name, o.type.tensor_type.elem_type) for o in model.graph.output] == [
        (contract.POOLED, onnx.TensorProto.FLOAT)]
    ops = {n.op_type for n in model.graph.node}
    if precision == "int8":
        assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    upcast = ort_upcast_ops(path)
    assert bool(upcast) == (precision != "fp32")  # ORT CPU: FP16 MatMul/Add/... only through casts

    executor, refused = choose_executor(path, None)
    assert executor.name == ("onnxruntime-cpu" if precision == "fp32" else "torch-interpreter"), refused
    out = Runner(executor, spec_encoder(spec)).outputs(texts)
    metrics = compare(fp32_outputs, out, spec.task)
    assert metrics["nonfinite_fraction"] == 0.0
    assert metrics["cosine_min"] >= MIN_COSINE[precision], metrics

    if precision != "fp32":  # ONNX Runtime executes it too (in FP32 inside), as the cpu variant serves it
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        feeds = spec_encoder(spec)(texts[:8])
        served = session.run(None, feeds)[0]
        assert served.dtype == np.float32 and np.isfinite(served).all()


@pytest.mark.parametrize("precision", PRECISIONS)
def test_builds_tensorrt_rtx_plan(embed, tmp_path, precision):
    pytest.importorskip("tensorrt_rtx")
    from trtserve_build.pipeline.steps import precision_graph
    from trtserve_build.runtime.tensorrt import import_flavour
    from trtserve_build.stages.tensorrt import build_plan

    spec, _ = embed
    path = precision_graph(spec, precision)
    record = build_plan(path, tmp_path / f"{precision}.plan", spec, precision,
                        flavour=import_flavour("tensorrt_rtx"), workspace_gb=1.0)
    assert record.precision == precision and record.strongly_typed
    assert record.plan_bytes > 5_000_000
    assert record.inputs == list(contract.ENCODER_INPUTS) and record.outputs == [contract.POOLED]


def test_fidelity_report_gates_pass(embed, tmp_path):
    from trtserve_build.pipeline.validate import run_deployment
    from trtserve_build.stages.fidelity import raise_for, write_report

    spec, _ = embed
    report = run_deployment(spec, ("fp16", "hybrid", "int8"))
    data = write_report([report], tmp_path / "fidelity.json", tmp_path / "fidelity.md")
    raise_for(report.gates)
    assert data["passed"]
    rows = {(r.precision, r.set): r for r in report.rows}
    assert rows[("hybrid", "stress")].texts >= 30 and rows[("hybrid", "real")].texts == 48
    assert rows[("hybrid", "real")].cosine_min >= 0.9998
    assert all(r.nonfinite_fraction == 0 for r in report.rows)
    assert "torch-interpreter" in rows[("hybrid", "real")].executor
    assert any("onnxruntime-cpu" in why for why in report.executors["hybrid"]["refused"])


def test_hybrid_cpu_repository_serves_the_hybrid_graph(embed, tmp_path):
    import onnx

    from trtserve_build.core.pbtxt import read_config
    from trtserve_build.pipeline.build import build_variant

    spec, _ = embed
    fp32_repo = build_variant([spec], "cpu", tmp_path / "fp32")
    hybrid_repo = build_variant([spec], "cpu", tmp_path / "hybrid", precision="hybrid")
    # the model that runs the engine: the one model (the cpu variant's default topology)
    encoder = spec.encoder_model if (fp32_repo / spec.encoder_model).is_dir() else spec.name
    fp32_cfg = read_config(fp32_repo / encoder / "config.pbtxt")
    hybrid_cfg = read_config(hybrid_repo / encoder / "config.pbtxt")
    assert list(hybrid_cfg.input) == list(fp32_cfg.input) and list(hybrid_cfg.output) == list(fp32_cfg.output)
    assert hybrid_cfg.parameters["precision"].string_value == "hybrid"
    served = onnx.load(str(hybrid_repo / encoder / "1" / "model.onnx"))
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in served.graph.initializer)
    assert (spec_path := tmp_path / "fp32" / encoder / "1" / "model.onnx").exists() and spec_path.stat().st_size > 80e6
