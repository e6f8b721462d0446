"""The benchmark matrix's GPT-2 series (issue 11): the 124M shapes it times, and the graphs it
times under ONNX Runtime computing what PyTorch computes (a tiny GPT-2, same code path)."""
from __future__ import annotations

import shutil

import numpy as np
import pytest

import trtserve_contract as contract

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from bench import matrix_gpt2 as gpt2  # noqa: E402
from bench import matrix_models as mm  # noqa: E402


def test_gpt2_124m_spec_feeds_and_module_have_the_papers_shapes():
    cfg = gpt2.gpt2_config()
    assert (cfg.n_layer, cfg.n_embd, cfg.n_head, cfg.vocab_size) == (12, 768, 12, 50257)
    assert gpt2.geometry() == (12, 12, 64)
    assert gpt2.MODEL in mm.MODELS and mm.input_names(gpt2.MODEL) == contract.DECODER_INPUTS

    stream = np.arange(5000, dtype=np.int64)
    feeds = mm.make_feeds(stream, 8, 128, gpt2.MODEL)
    assert feeds[contract.INPUT_IDS].shape == (8, 128) and feeds[contract.INPUT_IDS].dtype == np.int64
    assert feeds[contract.ATTENTION_MASK].shape == (8, 128) and feeds[contract.ATTENTION_MASK].all()
    assert (feeds[contract.POSITION_IDS] == np.arange(128)).all()
    assert (feeds[contract.INPUT_IDS][1] == stream[128:256]).all()  # consecutive tokens, no framing
    pasts = [feeds[n] for i in range(12) for n in (contract.past_key_name(i), contract.past_value_name(i))]
    assert len(feeds) == 3 + 24 and all(p.shape == (8, 12, 0, 64) for p in pasts)

    module = mm.torch_module(gpt2.MODEL)
    assert sum(p.numel() for p in module.parameters()) == 124_439_808  # GPT-2 small, tied LM head
    with torch.inference_mode():
        logits, cache = module(*(torch.from_numpy(feeds[n][:1, :32]) for n in mm.input_names(gpt2.MODEL)))
    assert tuple(logits.shape) == (1, 32, 50257)
    assert tuple(cache.layers[0].keys.shape) == (1, 12, 32, 64)


def _cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.reshape(-1, a.shape[-1]).astype(np.float64), b.reshape(-1, b.shape[-1]).astype(np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.fixture
def tiny_cache(tmp_path, monkeypatch):
    """A fresh artifact cache holding only GPT-2's tokenizer and the review corpus (copied from the
    project cache, where they are fetched once), and the tiny GPT-2 size."""
    from trtserve_build.core.paths import cache_dir
    from trtserve_build.data.datasets import corpus_texts
    from trtserve_build.data.tokenizer_assets import gpt2_tokenizer_folder

    corpus_texts(limit=1)
    shutil.copytree(gpt2_tokenizer_folder(cache_dir()), tmp_path / "tokenizers" / "gpt2")
    shutil.copytree(cache_dir() / "data", tmp_path / "data")
    monkeypatch.setenv("TRTSERVE_CACHE", str(tmp_path))
    monkeypatch.setattr(gpt2, "SIZE", "tiny")
    return tmp_path


@pytest.mark.slow
def test_tiny_gpt2_graphs_of_every_precision_compute_what_pytorch_does(tiny_cache):
    """The matrix's own path (export, precision stage with GPT-2 calibration, the ORT and torch
    loaders, the feeds) on a tiny GPT-2: fp32 within the encoders' export tolerance, fp16/hybrid/int8
    within the encoders' fidelity gates."""
    spec, _ = gpt2.spec_and_checkpoint()
    assert spec.name == "bench_gpt2_tiny"
    stream, inputs = mm.token_stream(4096, gpt2.MODEL)
    assert inputs == "real-text" and stream.max() < 50257
    feeds = mm.make_feeds(stream, 3, 24, gpt2.MODEL)
    torch_run = mm.load_series(gpt2.MODEL, "torch-cpu", "fp32").run
    ref_logits, ref_cache = torch_run(feeds)
    ref_logits, ref_key = ref_logits.numpy(), ref_cache.layers[1].keys.numpy()
    atol = 1e-3  # the encoders' export tolerance (bench_bert_spec: export.atol)
    for precision in ("fp32", "fp16", "hybrid", "int8"):
        path = mm.onnx_graph(gpt2.MODEL, precision)
        assert path.is_file() and path.parent.name == "bench_gpt2_tiny"
        logits, *presents = mm.load_series(gpt2.MODEL, "ort-cpu", precision).run(feeds)
        assert logits.shape == ref_logits.shape == (3, 24, 50257) and len(presents) == 4
        assert np.isfinite(logits).all(), precision
        cosine = float(_cosine_rows(ref_logits, logits).min())
        if precision == "fp32":
            assert float(np.abs(logits - ref_logits).max()) <= atol
            assert float(np.abs(presents[2] - ref_key).max()) <= atol  # layer 1's key
            assert cosine >= 0.9999
        else:
            gate = spec.precision.gate(precision).min_cosine or 0.999
            assert cosine >= gate, (precision, cosine, gate)
    calibration = tiny_cache / "engines" / "bench_gpt2_tiny" / "calibration-percentile.json"
    assert calibration.is_file()  # int8 was calibrated on GPT-2 tokens of the review texts
    made = {p.name: p.stat().st_mtime_ns for p in calibration.parent.glob("*.onnx")}
    assert sorted(made) == ["fp16.onnx", "hybrid.onnx", "int8.onnx", "model.onnx"]
    for precision in ("fp32", "int8"):
        mm.onnx_graph(gpt2.MODEL, precision)  # cached: neither exported nor transformed again
    assert {p.name: p.stat().st_mtime_ns for p in calibration.parent.glob("*.onnx")} == made


def test_a_series_whose_graph_cannot_be_made_or_loaded_is_recorded_with_the_error(tmp_path, monkeypatch):
    """No faked numbers: the rows say why the series has none, and the next series still runs."""
    from bench import bench_matrix
    from bench.matrix_measure import read_rows

    def no_graph(model, precision):
        raise RuntimeError(f"no {precision} kernel for MatMul")

    monkeypatch.setattr(bench_matrix, "onnx_graph", no_graph)
    csv_path = tmp_path / "matrix.csv"
    ran = bench_matrix.run_matrix(csv_path, [gpt2.MODEL], [("ort-cpu", "fp16")], [1, 2], [32],
                                  max_run_s=1, target_s=0.1, budget_s=60)
    rows = read_rows(csv_path)
    assert ran == 0 and len(rows) == 2
    assert {(r["status"], int(r["batch"])) for r in rows} == {("unavailable", 1), ("unavailable", 2)}
    assert all("the fp16 graph could not be made: RuntimeError: no fp16 kernel for MatMul" in r["note"] for r in rows)

    monkeypatch.setenv("TRTSERVE_CACHE", str(tmp_path / "cache"))
    broken = gpt2.prepared_graph("hybrid")
    broken.parent.mkdir(parents=True)
    broken.write_bytes(b"not an onnx graph")
    with pytest.raises(mm.Skip, match="ONNX Runtime .* cannot load hybrid.onnx"):
        mm.load_series(gpt2.MODEL, "ort-cpu", "hybrid")
