"""precision.py on tiny encoder-shaped ONNX graphs made here: types, casts, policy, Q/DQ."""
from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from trtserve_build.core.errors import DuplicateCastError, PrecisionError  # noqa: E402
from trtserve_build.graph import onnx_graph as G  # noqa: E402
from trtserve_build.graph.onnx_graph import check_casts, infer_types  # noqa: E402
from trtserve_build.graph.policy import HYBRID_POLICY, policy_for  # noqa: E402
from trtserve_build.graph.qdq import quantize_weight  # noqa: E402
from trtserve_build.graph.transform import INT8_OPSET, transform  # noqa: E402

VOCAB, HIDDEN, FFN = 50, 16, 32
F32, F16 = TensorProto.FLOAT, TensorProto.FLOAT16


def tiny_encoder(*, decomposed_ln: bool = False, scale: float = 1.0, seed: int = 0):
    """Embedding -> LayerNorm -> self-attention (Softmax, mask bias -3.4e38) -> LN -> GELU FFN
    -> LN -> masked mean pooling: the op mix of the exported BERT graphs, int64 in, FP32 out."""
    rng = np.random.default_rng(seed)
    w = lambda *shape: (rng.standard_normal(shape) * 0.2).astype(np.float32)  # noqa: E731
    inits = [
        numpy_helper.from_array(w(VOCAB, HIDDEN) * scale, "emb"),
        numpy_helper.from_array(np.ones(HIDDEN, np.float32), "ln_g"),
        numpy_helper.from_array(np.zeros(HIDDEN, np.float32), "ln_b"),
        numpy_helper.from_array(w(HIDDEN, HIDDEN), "wq"),
        numpy_helper.from_array(w(HIDDEN, HIDDEN), "wk"),
        numpy_helper.from_array(w(HIDDEN, HIDDEN), "wv"),
        numpy_helper.from_array(w(HIDDEN), "bq"),
        numpy_helper.from_array(w(HIDDEN, FFN), "w1"),
        numpy_helper.from_array(w(FFN), "b1"),
        numpy_helper.from_array(w(FFN, HIDDEN), "w2"),
        numpy_helper.from_array(np.array([1], np.int64), "axis1"),
        numpy_helper.from_array(np.array([-1], np.int64), "axis_last"),
        numpy_helper.from_array(np.array([0, 2, 1], np.int64), "perm"),
    ]
    nodes = [
        helper.make_node("Gather", ["emb", "input_ids"], ["x0"], name="embed"),
    ]

    def layernorm(x: str, out: str, tag: str):
        if not decomposed_ln:
            return [helper.make_node("LayerNormalization", [x, "ln_g", "ln_b"], [out], name=f"{tag}/ln", axis=-1, epsilon=1e-5)]
        return [
            helper.make_node("ReduceMean", [x], [f"{tag}/mean"], name=f"{tag}/mean", axes=[-1]),
            helper.make_node("Sub", [x, f"{tag}/mean"], [f"{tag}/d"], name=f"{tag}/sub"),
            helper.make_node("Pow", [f"{tag}/d", f"{tag}/two"], [f"{tag}/sq"], name=f"{tag}/pow"),
            helper.make_node("ReduceMean", [f"{tag}/sq"], [f"{tag}/var"], name=f"{tag}/var", axes=[-1]),
            helper.make_node("Add", [f"{tag}/var", f"{tag}/eps"], [f"{tag}/vareps"], name=f"{tag}/addeps"),
            helper.make_node("Sqrt", [f"{tag}/vareps"], [f"{tag}/std"], name=f"{tag}/sqrt"),
            helper.make_node("Div", [f"{tag}/d", f"{tag}/std"], [f"{tag}/norm"], name=f"{tag}/div"),
            helper.make_node("Mul", [f"{tag}/norm", "ln_g"], [f"{tag}/scaled"], name=f"{tag}/gamma"),
            helper.make_node("Add", [f"{tag}/scaled", "ln_b"], [out], name=f"{tag}/beta"),
        ]

    if decomposed_ln:
        for tag in ("ln0", "ln1", "ln2"):
            inits += [numpy_helper.from_array(np.array(2.0, np.float32), f"{tag}/two"),
                      numpy_helper.from_array(np.array(1e-5, np.float32), f"{tag}/eps")]
    nodes += layernorm("x0", "h0", "ln0")
    nodes += [
        # attention mask bias: 0 for tokens, float32 lowest for padding (as transformers exports it)
        helper.make_node("Cast", ["attention_mask"], ["maskf"], name="mask/cast", to=F32),
        helper.make_node("Unsqueeze", ["maskf", "axis1"], ["mask3"], name="mask/unsq"),
        helper.make_node("Equal", ["attention_mask", "zero_i64"], ["is_pad"], name="mask/eq"),
        helper.make_node("Unsqueeze", ["is_pad", "axis1"], ["is_pad3"], name="mask/unsq_pad"),
        helper.make_node("Where", ["is_pad3", "neg_big", "zero_f"], ["mask_bias"], name="mask/where"),
        helper.make_node("MatMul", ["h0", "wq"], ["q0"], name="q/matmul"),
        helper.make_node("Add", ["bq", "q0"], ["q"], name="q/bias"),
        helper.make_node("MatMul", ["h0", "wk"], ["k"], name="k/matmul"),
        helper.make_node("MatMul", ["h0", "wv"], ["v"], name="v/matmul"),
        helper.make_node("Transpose", ["k"], ["kt"], name="k/transpose", perm=[0, 2, 1]),
        helper.make_node("MatMul", ["q", "kt"], ["scores"], name="scores/matmul"),
        helper.make_node("Mul", ["scores", "inv_sqrt_d"], ["scaled"], name="scores/scale"),
        helper.make_node("Add", ["scaled", "mask_bias"], ["masked"], name="scores/mask"),
        helper.make_node("Softmax", ["masked"], ["probs"], name="softmax", axis=-1),
        helper.make_node("MatMul", ["probs", "v"], ["ctx"], name="ctx/matmul"),
        helper.make_node("Add", ["ctx", "h0"], ["res1"], name="res1"),
    ]
    nodes += layernorm("res1", "h1", "ln1")
    nodes += [
        helper.make_node("MatMul", ["h1", "w1"], ["f0"], name="ffn1/matmul"),
        helper.make_node("Add", ["b1", "f0"], ["f1"], name="ffn1/bias"),
        helper.make_node("Div", ["f1", "sqrt2"], ["g0"], name="gelu/div"),
        helper.make_node("Erf", ["g0"], ["g1"], name="gelu/erf"),
        helper.make_node("Add", ["g1", "one"], ["g2"], name="gelu/add"),
        helper.make_node("Mul", ["f1", "g2"], ["g3"], name="gelu/mul"),
        helper.make_node("Mul", ["g3", "half"], ["g4"], name="gelu/half"),
        helper.make_node("MatMul", ["g4", "w2"], ["f2"], name="ffn2/matmul"),
        helper.make_node("Add", ["f2", "h1"], ["res2"], name="res2"),
    ]
    nodes += layernorm("res2", "h2", "ln2")
    nodes += [
        helper.make_node("Unsqueeze", ["maskf", "axis_last"], ["maskw"], name="pool/unsq"),
        helper.make_node("Mul", ["h2", "maskw"], ["hm"], name="pool/mul"),
        helper.make_node("ReduceSum", ["hm", "axis1"], ["hsum"], name="pool/sum", keepdims=0),
        helper.make_node("ReduceSum", ["maskw", "axis1"], ["msum"], name="pool/count", keepdims=0),
        helper.make_node("Clip", ["msum", "tiny"], ["msum_c"], name="pool/clip"),
        helper.make_node("Div", ["hsum", "msum_c"], ["pooled"], name="pool/div"),
    ]
    inits += [
        numpy_helper.from_array(np.array(0, np.int64), "zero_i64"),
        numpy_helper.from_array(np.array(np.finfo(np.float32).min, np.float32), "neg_big"),
        numpy_helper.from_array(np.array(0.0, np.float32), "zero_f"),
        numpy_helper.from_array(np.array(1 / np.sqrt(HIDDEN), np.float32), "inv_sqrt_d"),
        numpy_helper.from_array(np.array(np.sqrt(2), np.float32), "sqrt2"),
        numpy_helper.from_array(np.array(1.0, np.float32), "one"),
        numpy_helper.from_array(np.array(0.5, np.float32), "half"),
        numpy_helper.from_array(np.array(1e-9, np.float32), "tiny"),
    ]
    inputs = [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "seq"]) for n in ("input_ids", "attention_mask")]
    outputs = [helper.make_tensor_value_info("pooled", F32, ["batch", HIDDEN])]
    graph = helper.make_graph(nodes, "tiny_encoder", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="test")
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def feeds(batch: int = 3, seq: int = 7, seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, VOCAB, size=(batch, seq), dtype=np.int64)
    mask = np.ones((batch, seq), np.int64)
    mask[0, 4:] = 0  # one padded row
    return {"input_ids": ids, "attention_mask": mask}


def ort_run(model, data):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, data)[0]


def node_types(model) -> dict[str, tuple[int, ...]]:
    """node name -> elem types of its float outputs."""
    types = infer_types(model)
    return {n.name: tuple(types.get(o) for o in n.output) for n in model.graph.node}


def cosine_min(a, b) -> float:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return float(((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))).min())


# ---- fp16 -------------------------------------------------------------------------------
def test_fp16_keeps_the_contract_and_converts_every_float():
    model = tiny_encoder()
    out, report = transform(model, "fp16")
    g = out.graph
    assert [(i.name, i.type.tensor_type.elem_type) for i in g.input] == [("input_ids", 7), ("attention_mask", 7)]
    assert [(o.name, o.type.tensor_type.elem_type) for o in g.output] == [("pooled", F32)]
    assert {t.data_type for t in g.initializer} <= {F16, TensorProto.INT64}
    types = node_types(out)
    for name in ("q/matmul", "softmax", "ln0/ln", "gelu/erf", "pool/sum"):
        assert types[name] == (F16,), name
    assert report.fp32_nodes == 0 and report.casts_inserted == 1  # only the output cast
    assert out.ir_version <= G.MAX_IR_VERSION


def test_fp16_clamps_the_mask_constant_instead_of_making_inf():
    out, report = transform(tiny_encoder(), "fp16")
    neg = next(numpy_helper.to_array(t) for t in out.graph.initializer if t.name == "neg_big")
    assert neg.dtype == np.float16 and float(neg) == -65504.0
    assert report.clamped_values == 1
    assert report.underflowed_values >= 1  # the 1e-9 clip floor is below FP16's smallest subnormal


# ---- hybrid -----------------------------------------------------------------------------
def test_hybrid_policy_ops_in_fp32_matmuls_in_fp16():
    out, report = transform(tiny_encoder(), "hybrid")
    types = node_types(out)
    for name in ("ln0/ln", "ln1/ln", "ln2/ln", "softmax", "pool/sum", "pool/count"):
        assert types[name] == (F32,), name
    for name in ("q/matmul", "k/matmul", "scores/matmul", "ctx/matmul", "ffn1/matmul", "ffn2/matmul", "gelu/erf", "res1"):
        assert types[name] == (F16,), name
    # the mask bias is built directly in FP16 (no cast of -3.4e38 -> -inf)
    assert types["mask/where"] == (F16,)
    assert report.fp32_ops["LayerNormalization"] == 3 and report.fp32_ops["Softmax"] == 1
    # pooling after the last LayerNorm follows its FP32 input: no cast there
    assert types["pool/mul"] == (F32,) and types["pool/div"] == (F32,)


def test_hybrid_casts_only_at_region_boundaries_once_per_tensor():
    out, report = transform(tiny_encoder(), "hybrid")
    casts = [n for n in out.graph.node if n.op_type == "Cast" and n.name.startswith(G.NODE_PREFIX)]
    # embeddings->LN0, LN0->fp16, scores->Softmax, Softmax->fp16, res1->LN1, LN1->fp16, res2->LN2
    assert len(casts) == report.casts_inserted == 7
    assert len({(c.input[0], c.attribute[0].i) for c in casts}) == len(casts)
    check_casts(out)  # no duplicate, no round trip
    # LN0's FP16 copy is shared by the Q, K, V MatMuls and the residual Add
    ln0_fp16 = next(c.output[0] for c in casts if c.input[0] == "h0")
    readers = {n.name for n in out.graph.node if ln0_fp16 in n.input}
    assert readers == {"q/matmul", "k/matmul", "v/matmul", "res1"}


def test_hybrid_matches_fp32_closely_in_onnx_runtime():
    model = tiny_encoder()
    data = feeds()
    ref = ort_run(model, data)
    for precision in ("fp16", "hybrid"):
        out, _ = transform(model, precision)
        got = ort_run(out, data)
        assert got.dtype == np.float32 and got.shape == ref.shape
        assert cosine_min(ref, got) > 0.999, precision


def test_decomposed_layernorm_is_kept_whole_in_fp32():
    out, report = transform(tiny_encoder(decomposed_ln=True), "hybrid")
    types = node_types(out)
    for tag in ("ln0", "ln1", "ln2"):
        for part in ("mean", "sub", "pow", "var", "addeps", "sqrt", "div", "gamma", "beta"):
            assert types[f"{tag}/{part}"] == (F32,), f"{tag}/{part}"
    assert types["gelu/div"] == (F16,)  # a Div outside the pattern stays FP16
    pow_exponent = next(t for t in out.graph.initializer if t.name == "ln0/two")
    assert pow_exponent.data_type == F32
    assert report.fp32_ops["Sub"] == 3 and report.fp32_ops["Div"] >= 3


def test_decomposed_layernorm_overflows_in_fp16_but_not_in_hybrid():
    """The paper's point. Activations of a few thousand: (x - mean)^2 passes 65504 in FP16,
    the variance becomes inf, x / sqrt(inf) = 0 and every LayerNorm output collapses to beta --
    silently, with no NaN. Hybrid keeps the LayerNorm subgraph in FP32 and stays exact."""
    from trtserve_build.runtime.interpreter import TorchInterpreter

    model = tiny_encoder(decomposed_ln=True, scale=2000.0)
    data = feeds()
    ref = TorchInterpreter(model, device="cpu").infer(data)[0]
    fp16 = TorchInterpreter(transform(model, "fp16")[0], device="cpu").infer(data)[0]
    hybrid = TorchInterpreter(transform(model, "hybrid")[0], device="cpu").infer(data)[0]
    assert np.isfinite(ref).all() and np.isfinite(hybrid).all()
    assert cosine_min(ref, hybrid) > 0.9999
    finite = np.isfinite(fp16).all(axis=1)
    assert not finite.all() or cosine_min(ref, fp16) < 0.5
    # the same graph at ordinary activation sizes is fine in FP16
    small = tiny_encoder(decomposed_ln=True, scale=1.0)
    ref_small = TorchInterpreter(small, device="cpu").infer(data)[0]
    fp16_small = TorchInterpreter(transform(small, "fp16")[0], device="cpu").infer(data)[0]
    assert cosine_min(ref_small, fp16_small) > 0.999


def test_policy_can_be_extended_per_spec():
    policy = policy_for("hybrid", ["Erf"])
    assert "Erf" in policy.op_types and policy.name.endswith("+Erf")
    out, _ = transform(tiny_encoder(), "hybrid", fp32_ops_extra=["Erf"])
    assert node_types(out)["gelu/erf"] == (F32,)
    assert policy_for("hybrid") is HYBRID_POLICY
    with pytest.raises(ValueError, match="no FP32 policy"):
        policy_for("fp32")


def test_source_model_is_not_modified_and_fp32_is_a_copy():
    model = tiny_encoder()
    before = model.SerializeToString()
    transform(model, "hybrid")
    assert model.SerializeToString() == before
    same, report = transform(model, "fp32")
    assert report is None and same.SerializeToString() == before


def test_unsupported_graphs_are_refused_with_a_reason():
    model = tiny_encoder()
    node = helper.make_node("Resize", ["x0", "", "scales"], ["resized"], name="resize")
    model.graph.node.append(node)
    model.graph.initializer.append(numpy_helper.from_array(np.ones(3, np.float32), "scales"))
    with pytest.raises(PrecisionError, match="Resize"):
        transform(model, "hybrid")
    with pytest.raises(ValueError, match="precision"):
        transform(tiny_encoder(), "bf16")


def test_check_casts_finds_duplicates_and_round_trips():
    x = helper.make_tensor_value_info("x", F32, [2])
    y = helper.make_tensor_value_info("y", F32, [2])
    z = helper.make_tensor_value_info("z", F32, [2])

    def model(nodes, outputs):
        m = helper.make_model(helper.make_graph(nodes, "g", [x], outputs), opset_imports=[helper.make_opsetid("", 17)])
        m.ir_version = 8
        return m

    dup = model([helper.make_node("Cast", ["x"], ["a"], name="c1", to=F16),
                 helper.make_node("Cast", ["x"], ["b"], name="c2", to=F16),
                 helper.make_node("Cast", ["a"], ["y"], name="c3", to=F32),
                 helper.make_node("Cast", ["b"], ["z"], name="c4", to=F32)], [y, z])
    with pytest.raises(DuplicateCastError, match="c1.*c2|cast to type 10 by both"):
        check_casts(dup)
    round_trip = model([helper.make_node("Cast", ["x"], ["a"], name="down", to=F16),
                        helper.make_node("Cast", ["a"], ["y"], name="up", to=F32)], [y])
    with pytest.raises(DuplicateCastError, match="away and back"):
        check_casts(round_trip)


# ---- int8 -------------------------------------------------------------------------------
def test_quantize_weight_per_output_channel():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((8, 5)).astype(np.float32) * np.array([0.01, 0.1, 1, 10, 100], np.float32)
    q, scale = quantize_weight(w, axis=1)
    assert q.dtype == np.int8 and scale.dtype == np.float16 and scale.shape == (5,)
    assert np.abs(q).max() == 127
    err = np.abs(q.astype(np.float32) * scale.astype(np.float32) - w)
    assert (err <= scale.astype(np.float32) * 0.5 + 1e-6).all()


def _amax_for(model, data) -> dict[str, float]:
    from trtserve_build.stages.calibrate import collect_ranges
    from trtserve_build.graph.qdq import int8_targets

    tensors = sorted({t for _, _, t in int8_targets(model)})
    hists = collect_ranges(model, tensors, [data])
    return {k: h.amax("max") for k, h in hists.items()}


def test_int8_adds_qdq_on_linear_matmul_inputs():
    from trtserve_build.runtime.interpreter import TorchInterpreter

    model = G.named_copy(tiny_encoder())
    data = feeds()
    amax = _amax_for(model, data)
    out, report = transform(model, "int8", activation_amax=amax)
    g = out.graph
    assert G.default_opset(out) == INT8_OPSET
    q = [n for n in g.node if n.op_type == "QuantizeLinear"]
    dq = [n for n in g.node if n.op_type == "DequantizeLinear"]
    # activations: h0 (shared by Q, K, V), h1 and g4 -> 3 Q/DQ pairs; weights: 5 DQs with axis=1
    assert len(q) == 3
    assert len(dq) == 3 + 5
    assert report.quantized_matmuls == 5 and report.unquantized_matmuls == []
    weight_dq = [n for n in dq if any(i.endswith("/int8") for i in n.input)]
    assert all(a.i == 1 for n in weight_dq for a in n.attribute if a.name == "axis")
    int8_weights = [t for t in g.initializer if t.data_type == TensorProto.INT8 and len(t.dims) == 2]
    assert len(int8_weights) == 5
    assert not any(t.name in ("wq", "w1") for t in g.initializer)  # FP16 copies dropped
    # attention MatMuls (activation x activation) stay FP16 in "linear" mode
    types = node_types(out)
    assert types["scores/matmul"] == (F16,)
    ref = TorchInterpreter(model, device="cpu").infer(data)[0]
    got = TorchInterpreter(out, device="cpu").infer(data)[0]
    assert cosine_min(ref, got) > 0.98


def test_int8_all_mode_quantizes_attention_too_and_needs_ranges():
    model = G.named_copy(tiny_encoder())
    with pytest.raises(PrecisionError, match="calibrated"):
        transform(model, "int8")
    from trtserve_build.stages.calibrate import collect_ranges
    from trtserve_build.graph.qdq import int8_targets

    tensors = sorted({t for _, _, t in int8_targets(model, "all")})
    assert {"q", "kt", "probs", "v"} <= set(tensors)
    amax = {k: h.amax("max") for k, h in collect_ranges(model, tensors, [feeds()]).items()}
    out, report = transform(model, "int8", activation_amax=amax, int8_matmuls="all")
    assert report.quantized_matmuls == 7
    with pytest.raises(PrecisionError, match="no calibrated range"):
        transform(model, "int8", activation_amax={})
