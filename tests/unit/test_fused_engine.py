"""engine_format "fused" and "aoti": the fused BERT-family encoder (models/fused.py), its two
programs (stages/compiled.py: traced TorchScript, or AOTInductor packages) and the torch engine
running them (masked program, and the no-mask program for batches without padding), all on the
CPU: a fused trace has no device constants and runs on the GPU as it is; a CPU AOTInductor package
is the same code path as a GPU one, compiled for another device."""
from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import trtserve_contract as contract  # noqa: E402
from trtserve_backend.parameters import TorchEncoderParameters  # noqa: E402
from trtserve_backend.programs import load_program  # noqa: E402
from trtserve_backend.torch_engine import GraphPlan, TorchEncoder, eager_graph_factory  # noqa: E402
from trtserve_build.core.errors import TorchScriptError  # noqa: E402
from trtserve_build.core.paths import AOTI_FILE, TORCHSCRIPT_FILE, full_rows_path  # noqa: E402
from trtserve_build.core.pbtxt import read_config  # noqa: E402
from trtserve_build.core.spec import SpecError, parse_spec  # noqa: E402
from trtserve_build.models.fused import fused_encoder, unsupported  # noqa: E402
from trtserve_build.models.heads import task_module  # noqa: E402
from trtserve_build.pipeline.build import build_variant  # noqa: E402
from trtserve_build.stages import compiled  # noqa: E402
from trtserve_build.stages.torchscript import PrecisionGate  # noqa: E402

from .test_torchscript import (TINY, _spec_dict, check_feeds, checkpoint_and_cache, tiny_config, tiny_model,  # noqa: E402,F401
                               tokenizer_file)

NAMES = contract.ENCODER_INPUTS
HEADS = {contract.CLASSIFICATION: transformers.BertForSequenceClassification,
         contract.QUESTION_ANSWERING: transformers.BertForQuestionAnswering,
         contract.TOKEN_CLASSIFICATION: transformers.BertForTokenClassification}


def _model(task: str, **config):
    torch.manual_seed(0)
    cfg = transformers.BertConfig(**{**{k: v for k, v in TINY.items() if k not in ("architectures", "id2label",
                                                                                  "label2id")}, **config})
    if task == contract.EMBEDDING_TASK:
        return transformers.BertModel(cfg).eval()
    return HEADS[task](cfg).eval()


def _run(module, feeds) -> np.ndarray:
    with torch.no_grad():
        return module(*(torch.from_numpy(np.ascontiguousarray(feeds[n])) for n in NAMES)).float().numpy()


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.mark.parametrize("task", [contract.CLASSIFICATION, contract.EMBEDDING_TASK, contract.QUESTION_ANSWERING,
                                  contract.TOKEN_CLASSIFICATION])
def test_fused_encoder_computes_the_task_head_of_the_hugging_face_model(task, check_feeds):
    """Same function as TaskModule over the Hugging Face model, on padded real-text rows (FP32)."""
    model = _model(task)
    expected = _run(task_module(model, task, NAMES), check_feeds)
    got = _run(fused_encoder(model, task, NAMES, "fp32"), check_feeds)
    assert got.shape == expected.shape
    if task in (contract.QUESTION_ANSWERING, contract.TOKEN_CLASSIFICATION):  # padded positions are junk in both
        keep = check_feeds[contract.ATTENTION_MASK].astype(bool)
        got, expected = got[keep], expected[keep]
    np.testing.assert_allclose(got, expected, atol=2e-5, rtol=1e-4)


def test_full_rows_encoder_equals_the_masked_one_on_unpadded_rows(check_feeds):
    model, task = _model(contract.EMBEDDING_TASK), contract.EMBEDDING_TASK
    lengths = check_feeds[contract.ATTENTION_MASK].sum(1)
    row = int(np.argmax(lengths))
    one = {n: v[row:row + 1, :lengths[row]] for n, v in check_feeds.items()}
    masked = _run(fused_encoder(model, task, NAMES, "fp32"), one)
    full = _run(fused_encoder(model, task, NAMES, "fp32", full_rows=True), one)
    np.testing.assert_allclose(full, masked, atol=1e-6)
    # ... and a padded row is where the two differ (the full-rows program must never see one)
    padded = {n: v[row:row + 1] for n, v in check_feeds.items()}
    assert lengths[row] < padded[contract.INPUT_IDS].shape[1]
    assert np.abs(_run(fused_encoder(model, task, NAMES, "fp32", full_rows=True), padded) - masked).max() > 1e-3


def test_hybrid_keeps_layernorm_in_fp32_and_stays_close_to_fp32(check_feeds):
    model = _model(contract.EMBEDDING_TASK)
    hybrid = fused_encoder(model, contract.EMBEDDING_TASK, NAMES, "hybrid")
    assert hybrid.ln.weight.dtype == torch.float32 and hybrid.layers[0].qkv.weight.dtype == torch.float16
    assert fused_encoder(model, contract.EMBEDDING_TASK, NAMES, "fp16").ln.weight.dtype == torch.float16
    got = _run(hybrid, check_feeds)
    assert _cosines(got, _run(task_module(model, contract.EMBEDDING_TASK, NAMES), check_feeds)).min() > 0.999


def test_residual_add_and_layer_norm_is_one_operator_in_a_trace_unless_norm_is_ops(check_feeds):
    """norm="kernel" and "epilogue" (the "fused" format): every layer's two add + LayerNorm are one
    call of ``trtserve::add_layer_norm`` in the trace, and so is the embeddings'; "epilogue" adds each
    in-layer residual in the GEMM before (``addmm_`` over the residual); norm="ops" (AOTInductor)
    writes plain ops; the same function all three ways."""
    model, task = _model(contract.CLASSIFICATION), contract.CLASSIFICATION
    feeds = tuple(torch.from_numpy(np.ascontiguousarray(check_feeds[n])) for n in NAMES)
    graphs, outputs = {}, {}
    for norm in ("kernel", "epilogue", "ops"):
        module = fused_encoder(model, task, NAMES, "hybrid", norm=norm)
        with torch.no_grad():
            traced = torch.jit.trace(module, feeds, check_trace=False)
            graphs[norm], outputs[norm] = str(traced.inlined_graph), traced(*feeds).numpy()
    assert graphs["kernel"].count("trtserve::add_layer_norm") == 2 * model.config.num_hidden_layers + 1  # + embeddings
    assert graphs["epilogue"].count("trtserve::add_layer_norm") == 2 * model.config.num_hidden_layers + 1
    assert graphs["epilogue"].count("aten::addmm_") == 2 * model.config.num_hidden_layers
    assert "aten::addmm_" not in graphs["kernel"]
    assert "trtserve::add_layer_norm" not in graphs["ops"]
    assert _cosines(outputs["kernel"], outputs["ops"]).min() > 0.9999
    assert _cosines(outputs["epilogue"], outputs["ops"]).min() > 0.9999
    with pytest.raises(ValueError, match="norm"):
        fused_encoder(model, task, NAMES, "hybrid", norm="triton")


@pytest.mark.parametrize("change, reason", [
    ({"hidden_act": "relu"}, "activation 'relu'"),
    ({"position_embedding_type": "relative_key"}, "position embeddings 'relative_key'"),
])
def test_what_the_fused_encoder_does_not_cover_is_named(change, reason):
    model = _model(contract.CLASSIFICATION, **change)
    assert reason in unsupported(model, contract.CLASSIFICATION)
    with pytest.raises(TorchScriptError, match=reason):
        fused_encoder(model, contract.CLASSIFICATION, NAMES, "fp16")
    distil = transformers.DistilBertForSequenceClassification(transformers.DistilBertConfig(
        dim=32, n_layers=1, n_heads=4, hidden_dim=64))
    assert "model type 'distilbert'" in unsupported(distil, contract.CLASSIFICATION)


def test_a_cuda_package_needs_a_gpu_host(tmp_path, check_feeds):
    if torch.cuda.is_available():
        pytest.skip("this host has a GPU")
    with pytest.raises(TorchScriptError, match="compiles CUDA kernels on a GPU host"):
        compiled.make_compiled(_model(contract.CLASSIFICATION), contract.CLASSIFICATION, "fp16", NAMES, check_feeds,
                               PrecisionGate(min_cosine=0.999), tmp_path / "m.pt2", output=contract.LOGITS,
                               max_batch=8, max_seq=32, device="cuda")


def test_engine_format_is_validated():
    with pytest.raises(SpecError, match="engine_format 'tensorrt'"):
        parse_spec(_spec_dict("/nonexistent", {"backend": "torch", "engine_format": "tensorrt"}))
    with pytest.raises(SpecError, match="only apply to backend \"torch\""):
        parse_spec(_spec_dict("/nonexistent", {"backend": "onnxruntime", "engine_format": "aoti"}))


@pytest.mark.parametrize("engine_format, engine_file", [("fused", TORCHSCRIPT_FILE), ("aoti", AOTI_FILE)])
def test_pipeline_builds_serves_and_caches_fused_programs(engine_format, engine_file, tiny_model, tokenizer_file,
                                                          check_feeds, tmp_path, monkeypatch):
    """Checkpoint -> export -> two programs (traced, or AOTInductor packages for the CPU) ->
    repository; the engine the served model builds from that config runs the no-mask program only
    for unpadded batches, and both programs give the Hugging Face model's logits."""
    checkpoint = checkpoint_and_cache(tiny_model, tokenizer_file, tmp_path, monkeypatch)
    monkeypatch.setenv("TRTSERVE_AOTI_DEVICE", "cpu")
    spec = parse_spec(_spec_dict(str(checkpoint), {"backend": "torch", "precision": "fp32",
                                                   "engine_format": engine_format, "cuda_graph_batch_sizes": [1, 8]}))

    repo = build_variant([spec], "gpu_torch", tmp_path / "repo")
    version = repo / spec.name / "1"
    full_file = full_rows_path(engine_file).name
    assert (version / engine_file).exists() and (version / full_file).exists()
    config = read_config(repo / spec.name / "config.pbtxt")
    params = {k: v.string_value for k, v in config.parameters.items()}
    assert (params["torchscript_file"], params["full_rows_file"]) == (engine_file, full_file)
    record = json.loads((repo / spec.name / "engine_record.json").read_text())
    assert record["engine_format"] == engine_format and record["vs_fp32"]["min_cosine"] > 0.99999
    assert record["full_rows_vs_masked"]["min_cosine"] > 0.9999 and record["sha256"]

    # the engine as the served model makes it, with an eager stand-in for CUDA graph capture
    p = TorchEncoderParameters(torchscript_file=params["torchscript_file"], precision="fp32", attention="sdpa",
                               full_rows_file=params["full_rows_file"])
    engine = TorchEncoder.from_file(str(version / p.torchscript_file), NAMES, "cpu", GraphPlan((1, 8), (8, 16, 32)),
                                    graph_factory=eager_graph_factory)
    engine.full_module = load_program(version / p.full_rows_file, "cpu")
    if engine_format == "fused":  # a trace records how its add + LayerNorm run: the default
        assert engine.metadata["norm"] == "epilogue"
    engine.capture()
    assert sorted(engine._full_graphs) == sorted(engine._graphs) == engine.graph_shapes
    reference = task_module(tiny_model, contract.CLASSIFICATION, NAMES)
    padded = {n: torch.from_numpy(v[:3]) for n, v in check_feeds.items()}
    assert not engine._uses_full(padded)
    np.testing.assert_allclose(engine.run(padded).numpy(), _run(reference, check_feeds)[:3], atol=1e-5)
    full = {n: v[:2, :8] for n, v in check_feeds.items()}
    full[contract.ATTENTION_MASK] = np.ones_like(full[contract.ATTENTION_MASK])
    feeds = {n: torch.from_numpy(np.ascontiguousarray(v)) for n, v in full.items()}
    assert engine._uses_full(feeds)
    np.testing.assert_allclose(engine.run(feeds).numpy(), _run(reference, full), atol=1e-5)

    # cached: a second build compiles nothing
    package = full_rows_path(version / engine_file)
    before = package.stat().st_mtime_ns
    build_variant([spec], "gpu_torch", tmp_path / "repo")
    assert package.stat().st_mtime_ns == before
