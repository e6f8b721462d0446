"""What the Python models send and read per request (triton_models/_common.py): the output
tensors, the fixed LABEL tensors made once, reading and decoding the text inputs."""
from __future__ import annotations

import numpy as np
import pytest

import trtserve_contract as contract
from trtserve_backend.model_config import TensorSpec
from trtserve_backend.postprocess import Embedder, LabelledClassifier
from trtserve_backend.tokenize import InvalidTextError, decode_texts

from .fake_pb_utils import Request, Tensor, install

OUTPUTS = (TensorSpec(contract.LABEL, np.object_, (1,)), TensorSpec(contract.SCORE, np.float32, (1,)),
           TensorSpec(contract.PROBABILITIES, np.float32, (2,)))
LABELS = ("negative", "positive")


@pytest.fixture
def common(monkeypatch):
    install(monkeypatch)
    from trtserve_backend.triton_models import _common

    return _common


def _rows(labels, probs):
    probs = np.asarray(probs, dtype=np.float32)
    return {contract.LABEL: np.array([[lab] for lab in labels], dtype=np.object_),
            contract.SCORE: probs.max(axis=-1, keepdims=True), contract.PROBABILITIES: probs}


def _sent(tensors):
    return {t.name(): t.as_numpy() for t in tensors}


def test_one_row_label_tensors_are_made_once_per_label(common):
    classifier = LabelledClassifier(LABELS)
    build = common.OutputTensors(OUTPUTS, common.fixed_output_values(classifier))
    first = build(_rows([b"positive"], [[0.2, 0.8]]))
    again = build(_rows([b"positive"], [[0.4, 0.6]]))
    other = build(_rows([b"negative"], [[0.9, 0.1]]))
    assert first[0] is again[0] and other[0] is not first[0]  # one tensor per label, reused
    assert [t.name() for t in first] == [o.name for o in OUTPUTS]
    assert _sent(again)[contract.LABEL].tolist() == [[b"positive"]]
    assert _sent(other)[contract.LABEL].tolist() == [[b"negative"]]
    assert _sent(other)[contract.LABEL].dtype == np.object_
    np.testing.assert_array_equal(_sent(again)[contract.PROBABILITIES], np.float32([[0.4, 0.6]]))  # the rest per request
    assert first[1] is not again[1] and first[2] is not again[2]


def test_labels_outside_the_fixed_values_or_several_rows_get_their_own_tensor(common):
    build = common.OutputTensors(OUTPUTS, {contract.LABEL: [b"negative", b"positive"]})
    rows = _rows([b"positive", b"negative"], [[0.2, 0.8], [0.7, 0.3]])
    assert build(rows)[0] is not build(rows)[0]  # a request of two texts
    assert _sent(build(rows))[contract.LABEL].tolist() == [[b"positive"], [b"negative"]]
    unknown = _rows([b"neutral"], [[0.5, 0.5]])
    assert build(unknown)[0] is not build(unknown)[0]
    assert _sent(build(unknown))[contract.LABEL].tolist() == [[b"neutral"]]
    # serialize_byte_tensor sends a non-bytes object as its str(): never swapped for a label's tensor
    for item in ("positive", np.bytes_(b"positive")):
        odd = {**unknown, contract.LABEL: np.array([[item]], dtype=np.object_)}
        assert build(odd)[0] is not build(odd)[0]
        assert _sent(build(odd))[contract.LABEL][0, 0] is item
    one_d = {**unknown, contract.LABEL: np.array([b"positive"], dtype=np.object_)}  # shapes kept apart
    assert _sent(build(one_d))[contract.LABEL].shape == (1,)
    assert _sent(build(_rows([b"positive"], [[0.2, 0.8]])))[contract.LABEL].shape == (1, 1)


def test_without_fixed_values_nothing_is_reused_and_dtypes_follow_the_config(common):
    build = common.OutputTensors(OUTPUTS)
    rows = _rows([b"positive"], [[0.2, 0.8]])
    assert build(rows)[0] is not build(rows)[0]
    probs = rows[contract.PROBABILITIES]
    assert _sent(build(rows))[contract.PROBABILITIES] is probs  # already fp32: sent as it is
    wide = build({**rows, contract.PROBABILITIES: probs.astype(np.float64)})
    assert _sent(wide)[contract.PROBABILITIES].dtype == np.float32
    assert common.fixed_output_values(Embedder()) == {}
    with pytest.raises(KeyError):
        build({contract.LABEL: rows[contract.LABEL]})  # every configured output must be given


def test_fixed_values_apply_to_object_items_only(common):
    """Only one-item object arrays are swapped: numeric outputs and fixed-width bytes are made per request."""
    build = common.OutputTensors(OUTPUTS, {contract.SCORE: [b"x"], contract.LABEL: [b"positive"]})
    rows = _rows([b"positive"], [[0.2, 0.8]])
    assert build(rows)[1] is not build(rows)[1]
    fixed_width = {**rows, contract.LABEL: np.array([[b"positive"]], dtype="S8")}
    assert build(fixed_width)[0] is not build(fixed_width)[0]
    assert _sent(build(fixed_width))[contract.LABEL].tolist() == [[b"positive"]]  # as the config's dtype
    assert _sent(build(fixed_width))[contract.LABEL].dtype == np.object_


def test_input_arrays_names_the_first_missing_input(common):
    data = np.array([[b"q"]], dtype=np.object_)
    request = Request([Tensor("QUESTION", data)])
    assert common.input_arrays(request, ["QUESTION"])["QUESTION"] is data
    with pytest.raises(KeyError, match="request lacks input 'CONTEXT'"):
        common.input_arrays(request, ["QUESTION", "CONTEXT", "OTHER"])


def test_read_items_one_input_and_pairs(common):
    text = np.array([[b"good"], [b"bad"]], dtype=np.object_)
    items, errors = common.read_items([Request([Tensor(contract.TEXT, text)]), Request([])], [contract.TEXT])
    assert items == [["good", "bad"], []] and errors == {1: "\"request lacks input 'TEXT'\""}
    q, c = np.array([[b"who?"]], dtype=np.object_), np.array([[b"me"], [b"you"]], dtype=np.object_)
    names = ["QUESTION", "CONTEXT"]
    items, errors = common.read_items([Request([Tensor("QUESTION", q), Tensor("CONTEXT", c[:1])]),
                                       Request([Tensor("QUESTION", q), Tensor("CONTEXT", c)])], names)
    assert items == [[("who?", "me")], []]
    assert "inputs of different lengths (QUESTION: 1, CONTEXT: 2)" in errors[1]


def test_decode_texts_falls_back_item_by_item():
    assert decode_texts(np.array([[b"ok"], ["caf\u00e9"]], dtype=np.object_)) == ["ok", "café"]
    assert decode_texts(np.array([[b"a"], [bytearray(b"b")], [np.bytes_(b"c")]], dtype=np.object_)) == ["a", "b", "c"]
    assert decode_texts(np.array([b"s1", b"s2"], dtype="S2")) == ["s1", "s2"]
    with pytest.raises(InvalidTextError, match=r"TEXT\[1\]: expected UTF-8 bytes, got int"):
        decode_texts(np.array([[b"ok"], [7]], dtype=np.object_))
