"""Token classification (NER): entities from per-token logits (``ner_postprocess``).

``transformers``' ``TokenClassificationPipeline.postprocess`` (the 4.57 line; Apache-2.0),
ported to the rows of :mod:`.windows`: per window, softmax over the labels, special tokens
dropped, subwords recognised as the pipeline does (``len(token) != len(text span)`` for
tokenizers with a continuing-subword prefix, a whitespace heuristic otherwise, never for
[UNK]), then the aggregation strategy (``none`` / ``simple`` / ``first`` / ``average`` /
``max``), the ignored labels (``O``) removed, and, for texts of several windows, the
overlapping entities merged as the pipeline's ``stride`` option does (the longer one, or the
higher score on equal length, wins). Same numpy operations in float32 as the pipeline.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Sequence

import numpy as np

import trtserve_contract as contract
from .windows import NO_SPAN, item_texts, split_windows, utf8_column, window_lengths

AGGREGATIONS = ("none", "simple", "first", "average", "max")
WORD_AGGREGATIONS = ("first", "average", "max")


@dataclass(frozen=True)
class NERSettings:
    labels: tuple[str, ...]
    aggregation_strategy: str = "simple"
    ignore_labels: tuple[str, ...] = ("O",)

    def __post_init__(self) -> None:
        if self.aggregation_strategy not in AGGREGATIONS:
            raise ValueError(f"aggregation_strategy {self.aggregation_strategy!r}; known: {AGGREGATIONS}")
        if not self.labels:
            raise ValueError("token classification needs labels")


class TokenVocabulary:
    """What the postprocess needs of the tokenizer: id -> token, tokens -> string, [UNK], subwords."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        model = tokenizer.model
        self.unk_token_id = tokenizer.token_to_id(getattr(model, "unk_token", None) or "[UNK]")
        self.word_aware = bool(getattr(model, "continuing_subword_prefix", None))

    @classmethod
    def from_file(cls, path: str) -> "TokenVocabulary":
        from tokenizers import Tokenizer

        return cls(Tokenizer.from_file(path))

    def token(self, token_id: int) -> str:
        return self.tokenizer.id_to_token(token_id)

    def tokens_to_string(self, tokens: Sequence[str]) -> str:
        decoder = self.tokenizer.decoder
        return decoder.decode(list(tokens)) if decoder is not None else " ".join(tokens)


def softmax32(logits: np.ndarray) -> np.ndarray:
    """The pipeline's softmax over the last axis, in the logits' dtype (float32)."""
    maxes = np.max(logits, axis=-1, keepdims=True)
    shifted_exp = np.exp(logits - maxes)
    return shifted_exp / shifted_exp.sum(axis=-1, keepdims=True)


def gather_pre_entities(sentence: str, input_ids: np.ndarray, scores: np.ndarray, spans: np.ndarray,
                        vocab: TokenVocabulary, strategy: str) -> list[dict]:
    pre_entities = []
    for idx, token_scores in enumerate(scores):
        start_ind, end_ind = int(spans[idx, 0]), int(spans[idx, 1])
        if start_ind == NO_SPAN:  # special token
            continue
        word = vocab.token(int(input_ids[idx]))
        word_ref = sentence[start_ind:end_ind]
        if vocab.word_aware:
            is_subword = len(word) != len(word_ref)
        else:
            is_subword = start_ind > 0 and " " not in sentence[start_ind - 1:start_ind + 1]
        if int(input_ids[idx]) == vocab.unk_token_id:
            word = word_ref
            is_subword = False
        pre_entities.append({"word": word, "scores": token_scores, "start": start_ind, "end": end_ind,
                             "index": idx, "is_subword": is_subword})
    return pre_entities


def _aggregate_word(entities: list[dict], strategy: str, labels: Sequence[str], vocab: TokenVocabulary) -> dict:
    word = vocab.tokens_to_string([e["word"] for e in entities])
    if strategy == "first":
        scores = entities[0]["scores"]
        idx = scores.argmax()
        score = scores[idx]
    elif strategy == "max":
        max_entity = max(entities, key=lambda e: e["scores"].max())
        scores = max_entity["scores"]
        idx = scores.argmax()
        score = scores[idx]
    else:  # average
        scores = np.stack([e["scores"] for e in entities])
        average_scores = np.nanmean(scores, axis=0)
        idx = average_scores.argmax()
        score = average_scores[idx]
    return {"entity": labels[idx], "score": score, "word": word, "start": entities[0]["start"],
            "end": entities[-1]["end"]}


def _aggregate_words(entities: list[dict], strategy: str, labels, vocab) -> list[dict]:
    word_entities, word_group = [], None
    for entity in entities:
        if word_group is None:
            word_group = [entity]
        elif entity["is_subword"]:
            word_group.append(entity)
        else:
            word_entities.append(_aggregate_word(word_group, strategy, labels, vocab))
            word_group = [entity]
    if word_group is not None:
        word_entities.append(_aggregate_word(word_group, strategy, labels, vocab))
    return word_entities


def _tag(entity_name: str) -> tuple[str, str]:
    if entity_name.startswith("B-"):
        return "B", entity_name[2:]
    if entity_name.startswith("I-"):
        return "I", entity_name[2:]
    return "I", entity_name  # not in B-/I- format: a continuation


def _group_sub_entities(entities: list[dict], vocab: TokenVocabulary) -> dict:
    entity = entities[0]["entity"].split("-", 1)[-1]
    scores = np.nanmean([e["score"] for e in entities])
    return {"entity_group": entity, "score": np.mean(scores),
            "word": vocab.tokens_to_string([e["word"] for e in entities]),
            "start": entities[0]["start"], "end": entities[-1]["end"]}


def group_entities(entities: list[dict], vocab: TokenVocabulary) -> list[dict]:
    groups, current = [], []
    for entity in entities:
        if not current:
            current.append(entity)
            continue
        bi, tag = _tag(entity["entity"])
        _, last_tag = _tag(current[-1]["entity"])
        if tag == last_tag and bi != "B":
            current.append(entity)
        else:
            groups.append(_group_sub_entities(current, vocab))
            current = [entity]
    if current:
        groups.append(_group_sub_entities(current, vocab))
    return groups


def aggregate(pre_entities: list[dict], settings: NERSettings, vocab: TokenVocabulary) -> list[dict]:
    strategy, labels = settings.aggregation_strategy, settings.labels
    if strategy in ("none", "simple"):
        entities = []
        for pre in pre_entities:
            idx = pre["scores"].argmax()
            entities.append({"entity": labels[idx], "score": pre["scores"][idx], "index": pre["index"],
                             "word": pre["word"], "start": pre["start"], "end": pre["end"]})
    else:
        entities = _aggregate_words(pre_entities, strategy, labels, vocab)
    if strategy == "none":
        return entities
    return group_entities(entities, vocab)


def aggregate_overlapping_entities(entities: list[dict]) -> list[dict]:
    """Entities of overlapping windows: of two that overlap, the longer (then higher-scoring) one."""
    if not entities:
        return entities
    entities = sorted(entities, key=lambda x: x["start"])
    aggregated, previous = [], entities[0]
    for entity in entities:
        if previous["start"] <= entity["start"] < previous["end"]:
            current_length = entity["end"] - entity["start"]
            previous_length = previous["end"] - previous["start"]
            if current_length > previous_length or current_length == previous_length and entity["score"] > previous["score"]:
                previous = entity
        else:
            aggregated.append(previous)
            previous = entity
    aggregated.append(previous)
    return aggregated


def entities_for_item(logits: np.ndarray, input_ids: np.ndarray, spans: np.ndarray, lengths: np.ndarray,
                      sentence: str, settings: NERSettings, vocab: TokenVocabulary) -> list[dict]:
    """The entities of one text from its windows (``logits`` [w, length, labels])."""
    if logits.shape[-1] != len(settings.labels):
        raise ValueError(f"logits have {logits.shape[-1]} labels, the model config names {len(settings.labels)}")
    all_entities = []
    for window in range(logits.shape[0]):
        n = int(lengths[window])
        scores = softmax32(logits[window, :n].astype(np.float32, copy=False))
        pre = gather_pre_entities(sentence, input_ids[window, :n], scores, spans[window, :n], vocab,
                                  settings.aggregation_strategy)
        grouped = aggregate(pre, settings, vocab)
        all_entities.extend(e for e in grouped if e.get("entity") not in settings.ignore_labels
                            and e.get("entity_group") not in settings.ignore_labels)
    if logits.shape[0] > 1:
        all_entities = aggregate_overlapping_entities(all_entities)
    return all_entities


def to_json(entities: list[dict]) -> str:
    """The ``ENTITIES`` string: the pipeline's dicts (numpy scalars as plain numbers)."""
    return json.dumps([{k: (v.item() if isinstance(v, np.generic) else v) for k, v in e.items()} for e in entities],
                      ensure_ascii=False)


def entities_requests(logits: np.ndarray, input_ids: np.ndarray, spans: np.ndarray, window_item: np.ndarray,
                      texts: np.ndarray, settings: NERSettings, vocab: TokenVocabulary) -> list[list[dict]]:
    """The entities of each item of one request (k window rows -> n lists)."""
    lengths = window_lengths(spans)
    return [entities_for_item(logits[rows], input_ids[rows], spans[rows], lengths[rows], text, settings, vocab)
            for rows, text in zip(split_windows(window_item), item_texts(texts, window_item))]


class NERPostprocess:
    """One request's window rows -> ``{ENTITIES}`` [n, 1], a JSON array per text (``ner_postprocess``)."""

    def __init__(self, settings: NERSettings, vocab: TokenVocabulary):
        self.settings = settings
        self.vocab = vocab

    def __call__(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        per_item = entities_requests(inputs[contract.LOGITS], inputs[contract.INPUT_IDS], inputs[contract.TOKEN_SPANS],
                                     inputs[contract.WINDOW_ITEM], inputs[contract.ITEM_TEXT], self.settings, self.vocab)
        return {contract.ENTITIES: utf8_column([to_json(e) for e in per_item])}
