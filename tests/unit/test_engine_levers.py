"""bench/gpu/engine_levers.py on the CPU: every lever of issue 13's engine search on a tiny BERT.

The GPU run measures speed; what can be wrong before it (a lever that changes the function, an
FP8 path that quantizes the wrong tensor, a mask that is not dropped, a phase that crashes the
run) is checked here: each lever against FP32 of the same weights, and the whole script end to
end in its CPU rehearsal (eager, no CUDA graphs).
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

GPU_BENCH = Path(__file__).resolve().parents[2] / "bench" / "gpu"
sys.path.insert(0, str(GPU_BENCH))

import engine_levers as el  # noqa: E402
import levers_lean  # noqa: E402
import levers_micro  # noqa: E402
import levers_models as lm  # noqa: E402

SEQ = 16


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=1000, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=128, num_labels=2)
    model = transformers.BertForSequenceClassification(config).eval()
    model.config._attn_implementation = "sdpa"
    calib = el.make_feeds(8, SEQ, 1000, "cpu", seed=3, padded=True)
    amax = lm.calibrate(model, dict(zip(("input_ids", "attention_mask", "token_type_ids"), calib)))
    return model, amax


def _cosine(ref, out) -> float:
    return el.agreement(ref, out)["min_cosine"]


@pytest.mark.parametrize("name", [lv.name for lv in lm.LEVERS])
def test_every_lever_computes_what_fp32_computes(tiny, name):
    model, amax = tiny
    lever = lm.LEVERS_BY_NAME[name]
    feeds = el.make_feeds(6, SEQ, 1000, "cpu", seed=5, padded=lever.mask)
    if lever.mask:
        assert int(feeds[1].sum()) < 6 * SEQ, "a masked lever must be checked on padded rows"
    reference = lm.LeverModule(model, mask=True, pooled=True)
    candidate = lm.build(model, lever, amax, pooled=True)
    with torch.no_grad(), lm.sdpa_masks_seen() as masks:
        out = candidate(*feeds)
    with torch.no_grad():
        ref = reference(*feeds)
    assert out.dtype == torch.float32 and out.shape == ref.shape
    assert _cosine(ref, out) >= el.SANITY_MIN_COSINE
    # the mask lever is what it says: SDPA got a mask, or none at all
    assert masks, "no scaled_dot_product_attention call was seen"
    assert (set(masks) == {"none"}) == (not lever.mask), masks


@pytest.mark.parametrize("name", [lv.name for lv in lm.LEVERS])
def test_every_lever_passes_the_gpu_paths_argument_checks_on_meta_tensors(tiny, name):
    """Off the CPU, FP8 levers call torch._scaled_mm: its meta function checks what the CUDA kernel
    will (FP8 operands, the second one column-major, FP32 scales, bias and output dtypes)."""
    model, amax = tiny
    lever = lm.LEVERS_BY_NAME[name]
    # transformers' 2-D mask path asks mask.all() (no value on meta): the ready-made 4-D mask
    module = (lm.build(model, lever, amax) if lever.encoder == "lean" else
              lm.LeverModule(lm.convert(model, lever, amax), lever.mask, mask4d=True)).to("meta")
    feeds = [t.to("meta") for t in el.make_feeds(4, SEQ, 1000, "cpu", seed=1, padded=lever.mask)]
    with torch.no_grad():
        out = module(*feeds)
    assert out.shape == (4, 2) and out.dtype == torch.float32 and out.device.type == "meta"


def test_levers_change_the_modules_they_name(tiny):
    model, amax = tiny
    fp8 = lm.convert(model, lm.LEVERS_BY_NAME["fp8_nomask"], amax)
    layer = fp8.bert.encoder.layer[0]
    assert isinstance(layer.attention.self, lm.FusedSelfAttention)
    assert isinstance(layer.attention.self.qkv, lm.Fp8Linear)
    qkv = layer.attention.self.qkv.wq_t
    assert qkv.shape == (64, 3 * 64) and qkv.stride() == (1, 64)  # column-major, as _scaled_mm wants
    for dense in (layer.attention.output.dense, layer.intermediate.dense, layer.output.dense):
        assert isinstance(dense, lm.Fp8Linear) and dense.wq_t.dtype == torch.float8_e4m3fn
    assert fp8.classifier.weight.dtype == torch.float16  # heads stay fp16
    lt = lm.convert(model, lm.LEVERS_BY_NAME["nomask_lt_gelu"], amax)
    assert all(isinstance(layer.intermediate, lm.LtGeluIntermediate) for layer in lt.bert.encoder.layer)
    bf16 = lm.convert(model, lm.LEVERS_BY_NAME["bf16_nomask_lt_gelu"], amax)
    assert bf16.bert.embeddings.word_embeddings.weight.dtype == torch.bfloat16
    assert model.bert.encoder.layer[0].intermediate.dense.weight.dtype == torch.float32  # the reference untouched
    with pytest.raises(ValueError, match="calibration"):
        lm.convert(model, lm.LEVERS_BY_NAME["fp8_mask"], None)
    with pytest.raises(ValueError, match="gelu"):
        lm.Lever("x", "bad", gelu="relu")


def test_fp8_linear_is_a_quantized_linear():
    torch.manual_seed(1)
    lin = torch.nn.Linear(64, 48)
    x = torch.randn(10, 64)
    fp8 = lm.Fp8Linear(lin.weight, lin.bias, float(x.abs().max()))
    with torch.no_grad():
        exact, out = lin(x), fp8(x)
    rel = float((out - exact).norm() / exact.norm())
    assert 1e-4 < rel < 0.08, rel  # e4m3 has a 3-bit mantissa: close, but not equal
    # a too-small calibrated range clamps: the error grows, which the fidelity check would catch
    clamped = lm.Fp8Linear(lin.weight, lin.bias, float(x.abs().max()) / 20)
    with torch.no_grad():
        assert float((clamped(x) - exact).norm() / exact.norm()) > 2 * rel
    # the GPU path's argument checks (meta): a row-major weight, as a folded transpose would give, is refused
    wrong = lm.Fp8Linear(lin.weight, lin.bias, 3.0).to("meta")
    wrong.wq_t = wrong.wq_t.contiguous()
    with pytest.raises(RuntimeError, match="col_major"):
        wrong(torch.empty(10, 64, dtype=torch.float16, device="meta"))


def test_addmm_gelu_op_matches_linear_then_gelu():
    torch.manual_seed(2)
    x, w, b = torch.randn(5, 8), torch.randn(12, 8), torch.randn(12)
    out = lm.addmm_gelu(x, w, b)
    # on the CPU _addmm_activation applies the exact (erf) GELU; on CUDA the tanh approximation
    assert torch.allclose(out, torch.nn.functional.gelu(torch.nn.functional.linear(x, w, b)), atol=1e-5)
    torch.library.opcheck(lm.addmm_gelu, (x, w, b))  # the fake (shape) function agrees with the op


def test_no_mask_module_ignores_the_mask_only_when_rows_are_full(tiny):
    model, amax = tiny
    lever = lm.LEVERS_BY_NAME["nomask"]
    module = lm.build(model, lever, amax, pooled=True)
    masked = lm.build(model, lm.LEVERS_BY_NAME[lm.BASELINE], amax, pooled=True)
    full = el.make_feeds(4, SEQ, 1000, "cpu", seed=9, padded=False)
    padded = el.make_feeds(4, SEQ, 1000, "cpu", seed=9, padded=True)
    with torch.no_grad():
        same = el.agreement(masked(*full), module(*full))
        moved = el.agreement(masked(*padded), module(*padded))
    assert same["min_cosine"] > 0.99999
    # padded rows: without the mask the real tokens attend to the padding, and the output moves
    assert moved["max_abs_diff"] > max(20 * same["max_abs_diff"], 1e-2), (same, moved)


def test_inductor_settings_restore_and_refuse_unknown_names():
    import torch._inductor.config as cfg

    before = cfg.freezing
    with lm.inductor_settings(lm.LEVERS_BY_NAME["nomask_lt_gelu_cdt"]):
        assert cfg.freezing is True and cfg.coordinate_descent_tuning is True
    assert cfg.freezing == before and cfg.coordinate_descent_tuning is False
    with pytest.raises(AttributeError):
        with lm.inductor_settings(lm.Lever("x", "bad", inductor={"no_such_inductor_option": 1})):
            pass
    assert cfg.freezing == before


def test_cuda_usable_is_false_without_a_working_context():
    # the run exits for a resumed one only when this is False after a failed step
    assert el.cuda_usable() is bool(torch.cuda.is_available())
    assert el.RESTART_EXIT not in (0, 1, 124, 137)  # distinct from success, Python errors and timeouts


def test_time_cap_interrupts_a_long_step():
    started = time.perf_counter()
    with pytest.raises(el.StepTimeout):
        with el.time_cap(0.2):
            while True:
                time.sleep(0.01)
    assert time.perf_counter() - started < 2


def test_micro_runs_on_the_cpu(tiny):
    model, _ = tiny
    store: dict = {}
    levers_micro.run_all(store, batch=2, seq=SEQ, config=model.config, device=torch.device("cpu"),
                         timer=lambda fn, rows: el.time_cpu(fn, rows, iters=1), log=lambda m: None, save=lambda: None)
    assert "back_to_back_ms" in store["attention"]["sdpa default, padded mask"]
    gemm = store["gemm"]
    assert "back_to_back_ms" in gemm["fp16 ffn up, bias+GELU in the cuBLASLt epilogue"]
    assert gemm["bound fp16"]["seq_per_s"] > 0
    assert levers_micro.kernel_category("triton_per_fused_add_native_layer_norm_3") == "layernorm"
    assert levers_micro.kernel_category("sm90_xmma_gemm_f16f16_f32") == "gemm"
    assert levers_micro.kernel_category("fmha_cutlassF_f16_aligned_64x64_rf_sm80") == "attention"


def test_dry_run_end_to_end_and_resume(tmp_path):
    out = tmp_path / "levers.json"
    args = ["--dry-run", "--out", str(out), "--levers", "baseline,lean_nomask_lt,fp8_nomask,nomask_cudnn",
            "--late-levers", "", "--skip-micro", "--big-batch", "0"]
    assert el.main(args) == 0
    result = json.loads(out.read_text())
    assert result["finished"] is True
    done = {(r["lever"], r["batch"]) for r in result["rows"]}
    assert {("baseline", 4), ("lean_nomask_lt", 4), ("fp8_nomask", 4)} <= done
    assert ("baseline", 8) in done and ("baseline", 1) in done  # more batches, one row
    assert ("lean_nomask_lt", 1) in done  # the best fp16 lever gets the 1-row batch too
    assert "nomask_cudnn 4x16" in result["errors"]  # no cuDNN on a CPU: recorded, the run went on
    for r in result["rows"]:
        assert r["within_tolerance"] and r["replay_vs_call"]["min_cosine"] > 0.99999
    assert result["levers"]["lean_nomask_lt"]["pooled_vs_fp32"]["sdpa_masks"] == ["none"]
    assert result["levers"]["lean_nomask_lt"]["encoder"] == "lean"
    table = out.with_suffix(".md").read_text()
    assert "| baseline | 2" in table.replace(",", "") or "| baseline |" in table
    assert "fp8 GEMMs: not the fp16 target's precision" in table

    # a crash mid-step: the resumed run skips that step and keeps what was measured
    result["rows"] = [r for r in result["rows"] if r["lever"] != "fp8_nomask"]
    result["running"] = "fp8_nomask 4x16"
    result["finished"] = False
    out.write_text(json.dumps(result))
    assert el.main(args + ["--resume"]) == 0
    resumed = json.loads(out.read_text())
    assert resumed["errors"]["fp8_nomask 4x16"].startswith("crashed")
    assert resumed["resumed"] == 1 and resumed["finished"] is True
    assert ("baseline", 4) in {(r["lever"], r["batch"]) for r in resumed["rows"]}


def test_table_marks_the_target_and_tolerance():
    result = {"seq": 128, "errors": {"x 256x128": "skipped"}, "levers": {
        "baseline": {"note": "", "pooled_vs_fp32": {"min_cosine": 0.9999}},
        "fast": {"note": "", "pooled_vs_fp32": {"min_cosine": 0.9999}},
        "wrong": {"note": "", "pooled_vs_fp32": {"min_cosine": 0.9}}},
        "rows": [
            {"lever": "baseline", "batch": 256, "throughput_per_s": 19400.0, "within_tolerance": True,
             "logits_vs_fp32": {"min_cosine": 0.99999}},
            {"lever": "fast", "batch": 256, "throughput_per_s": 23000.0, "within_tolerance": True,
             "logits_vs_fp32": {"min_cosine": 0.99999}},
            {"lever": "wrong", "batch": 256, "throughput_per_s": 30000.0, "within_tolerance": False,
             "logits_vs_fp32": {"min_cosine": 0.9}}]}
    lines = el.table(result).splitlines()
    fast = next(line for line in lines if line.startswith("| fast"))
    wrong = next(line for line in lines if line.startswith("| wrong"))
    assert "(1.19x)" in fast and fast.endswith("| yes | yes |")
    assert wrong.endswith("| NO | no |")
    assert "- x 256x128: skipped" in lines


def test_lean_encoder_is_the_kernels_it_names(tiny):
    model, _ = tiny
    lean = lm.build(model, lm.LEVERS_BY_NAME["lean_nomask_lt"])
    layer = lean.layers[0]
    assert isinstance(layer.qkv, torch.nn.Linear) and tuple(layer.qkv.weight.shape) == (3 * 64, 64)
    assert isinstance(layer.up, lm.LtGeluIntermediate) and layer.qkv.weight.dtype == torch.float16
    ffn = lm.build(model, lm.LEVERS_BY_NAME["lean_nomask_fp8ffn"]).layers[1]
    assert isinstance(ffn.qkv, torch.nn.Linear) and isinstance(ffn.out, torch.nn.Linear)  # attention stays fp16
    assert isinstance(ffn.up[0], lm.Fp8Linear) and isinstance(ffn.down, lm.Fp8Linear) and ffn.down.rowwise
    fp8 = lm.build(model, lm.LEVERS_BY_NAME["lean_nomask_fp8"]).layers[0]
    assert all(isinstance(m, lm.Fp8Linear) and m.rowwise for m in (fp8.qkv, fp8.out, fp8.up[0], fp8.down))
    with pytest.raises(ValueError, match="rowwise FP8"):
        lm.Lever("x", "bad", gemm="fp8_ffn")  # the HF encoder has per-tensor FP8 only
    with pytest.raises(ValueError, match="epilogue"):
        lm.Lever("x", "bad", encoder="lean", gemm="fp8_ffn", gelu="lt")


def test_lean_masks_are_what_sdpa_gets(tiny):
    model, _ = tiny
    feeds = el.make_feeds(3, SEQ, 1000, "cpu", seed=2, padded=True)
    kpad = lm.build(model, lm.LEVERS_BY_NAME["lean_kpad_lt"]).attention_mask(feeds[1])
    assert kpad.shape == (3, 1, 1, SEQ) and kpad.dtype == torch.float16
    assert bool((kpad[:, 0, 0] == 0).eq(feeds[1].bool()).all()) and float(kpad.min()) == torch.finfo(torch.float16).min
    full = lm.build(model, lm.LEVERS_BY_NAME["lean_mask_lt"]).attention_mask(feeds[1])
    assert full.shape == (3, 1, SEQ, SEQ) and full.dtype == torch.bool
    assert lm.build(model, lm.LEVERS_BY_NAME["lean_nomask_lt"]).attention_mask(feeds[1]) is None


def test_compiled_attention_ops(tiny):
    """What torch.compile keeps of the attention: the lean encoder's one opaque op (no math-backend
    softmax or batched GEMMs around it), or SDPA traced as one fused op when the op is off."""
    model, amax = tiny
    feeds = el.make_feeds(2, SEQ, 1000, "cpu", seed=1, padded=False)
    op = levers_micro.sdpa_trace(lm.build(model, lm.LEVERS_BY_NAME["lean_nomask_lt"]), feeds)
    assert op["aten"] == {"trtserve_levers.self_attention.default": 2}, op  # one per layer, nothing else
    traced = levers_micro.sdpa_trace(lm.build(model, lm.LEVERS_BY_NAME["lean_nomask_lt_sdpa"]), feeds)
    assert traced["masks"] == ["none"] and any("scaled_dot_product" in k for k in traced["aten"]), traced
    assert not any("softmax" in k for k in traced["aten"]), traced
    hf = levers_micro.sdpa_trace(lm.build(model, lm.LEVERS_BY_NAME["nomask"], amax), feeds)
    assert hf["masks"] and hf["aten"], hf  # recorded (what it holds depends on the transformers version)


def test_self_attention_op_is_sdpa():
    torch.manual_seed(3)
    qkv = torch.randn(2, 5, 3 * 8)
    mask = torch.rand(2, 1, 1, 5) > 0.3
    mask[..., 0] = True
    q, k, v = qkv.view(2, 5, 3, 2, 4).permute(2, 0, 3, 1, 4)
    expected = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2).reshape(2, 5, 8)
    out = levers_lean.self_attention(qkv, mask, 2)
    assert out.is_contiguous() and torch.allclose(out, expected, atol=1e-6)
    torch.library.opcheck(levers_lean.self_attention, (qkv, mask, 2))
    torch.library.opcheck(levers_lean.self_attention, (qkv, None, 2))


def test_fp8_rowwise_scales_per_token_and_channel():
    torch.manual_seed(4)
    lin = torch.nn.Linear(64, 48)
    x = torch.randn(10, 64)
    # one token 1e5 times louder: with one scale for the tensor the others fall into e4m3's subnormals
    # (below 2^-6 of the scale); per token they keep their own range. (e4m3's 3-bit mantissa costs
    # a few % per row either way: rowwise scaling does not buy precision, only range.)
    x[3] *= 1e5
    rowwise = lm.Fp8Linear(lin.weight, lin.bias, None)
    tensorwise = lm.Fp8Linear(lin.weight, lin.bias, float(x.abs().max()))
    assert rowwise.w_scale.shape == (1, 48) and rowwise.w_scale.is_contiguous() and rowwise.wq_t.stride() == (1, 64)
    with torch.no_grad():
        exact = lin(x)
        quiet = [0, 1, 2, 4, 5]  # the other tokens' relative error
        err = {name: float(((m(x) - exact).norm(dim=1) / exact.norm(dim=1))[quiet].max())
               for name, m in (("rowwise", rowwise), ("tensorwise", tensorwise))}
    assert 1e-3 < err["rowwise"] < 0.08 and err["tensorwise"] > 4 * err["rowwise"], err
    # the GPU path's argument checks (meta): [tokens, 1] and [1, out] fp32 scales, fp16 bias and out
    out = rowwise.to("meta")(torch.empty(10, 64, dtype=torch.float16, device="meta"))
    assert out.shape == (10, 48) and out.dtype == torch.float16
