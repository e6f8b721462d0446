"""What the other encoder architectures add to an exported graph, handled by the graph layer.

RoBERTa/XLM-R/MPNet compute position ids with CumSum (and RoBERTa/DeBERTa gather token types
with GatherElements); DeBERTa's relative-position buckets use Sign, Ceil and Tile. Their
exports also carry casts that do nothing (int64 -> int64) or that repeat another cast of the
same tensor; the precision transform drops those before retyping instead of refusing the graph.
"""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from trtserve_build.core.errors import DuplicateCastError
from trtserve_build.graph.onnx_graph import MAX_IR_VERSION, check_casts, drop_redundant_casts
from trtserve_build.runtime.interpreter import TorchInterpreter


def _model(nodes, inputs, outputs, inits=()):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = MAX_IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    return model


def _run_both(model, feeds):
    expected = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    got = TorchInterpreter(model, device="cpu").infer(feeds)
    for e, g in zip(expected, got):
        np.testing.assert_allclose(g, e, rtol=1e-6, atol=1e-6)


def test_position_ids_from_the_padding_index():
    """RoBERTa: cumsum(input_ids != pad) * mask + pad, and token types gathered by position."""
    ids = helper.make_tensor_value_info("ids", TensorProto.INT64, ["b", "s"])
    table = helper.make_tensor_value_info("table", TensorProto.FLOAT, ["b", "s"])
    out = helper.make_tensor_value_info("pos", TensorProto.INT64, ["b", "s"])
    gathered = helper.make_tensor_value_info("g", TensorProto.FLOAT, ["b", "s"])
    nodes = [
        helper.make_node("Constant", [], ["pad"], value=helper.make_tensor("pad", TensorProto.INT64, [], [1])),
        helper.make_node("Constant", [], ["axis"], value=helper.make_tensor("axis", TensorProto.INT64, [], [1])),
        helper.make_node("Equal", ["ids", "pad"], ["is_pad"]),
        helper.make_node("Not", ["is_pad"], ["real"]),
        helper.make_node("Cast", ["real"], ["mask"], to=TensorProto.INT64),
        helper.make_node("CumSum", ["mask", "axis"], ["csum"]),
        helper.make_node("Mul", ["csum", "mask"], ["m"]),
        helper.make_node("Add", ["m", "pad"], ["pos"]),
        helper.make_node("Sub", ["pos", "pad"], ["idx"]),
        helper.make_node("GatherElements", ["table", "idx"], ["g"], axis=1),
    ]
    model = _model(nodes, [ids, table], [out, gathered])
    feeds = {"ids": np.array([[0, 5, 6, 2, 1, 1], [0, 7, 2, 1, 1, 1]], dtype=np.int64),
             "table": np.arange(12, dtype=np.float32).reshape(2, 6)}
    _run_both(model, feeds)


def test_deberta_relative_bucket_ops():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])
    reps = helper.make_tensor("reps", TensorProto.INT64, [2], [2, 1])
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, shape)
            for n, shape in (("sign", [2, 3]), ("ceil", [2, 3]), ("tile", [4, 3]))]
    nodes = [helper.make_node("Sign", ["x"], ["sign"]), helper.make_node("Ceil", ["x"], ["ceil"]),
             helper.make_node("Tile", ["x", "reps"], ["tile"])]
    model = _model(nodes, [x], outs, [reps])
    _run_both(model, {"x": np.array([[-1.5, 0.0, 2.25], [3.0, -0.2, 7.9]], dtype=np.float32)})


def test_redundant_casts_are_dropped_and_the_result_is_unchanged():
    a = helper.make_tensor_value_info("a", TensorProto.INT64, ["n"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n"])
    nodes = [
        helper.make_node("Cast", ["a"], ["a1"], to=TensorProto.INT64, name="identity"),
        helper.make_node("Cast", ["a1"], ["a2"], to=TensorProto.INT64, name="identity_again"),
        helper.make_node("Cast", ["a2"], ["f1"], to=TensorProto.FLOAT, name="first"),
        helper.make_node("Cast", ["a2"], ["f2"], to=TensorProto.FLOAT, name="duplicate"),
        helper.make_node("Add", ["f1", "f2"], ["y"]),
    ]
    model = _model(nodes, [a], [y])
    with pytest.raises(DuplicateCastError):
        check_casts(model)
    cleaned = drop_redundant_casts(model)
    check_casts(cleaned)
    assert [n.op_type for n in cleaned.graph.node] == ["Cast", "Add"] and cleaned.graph.node[0].name == "first"
    feeds = {"a": np.array([1, 2, 3], dtype=np.int64)}
    before = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    after = ort.InferenceSession(cleaned.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    np.testing.assert_array_equal(before[0], after[0])
