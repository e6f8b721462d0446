"""Task metrics with the official formulas: SQuAD EM/F1 (v1.1 and v2.0) and entity F1 (seqeval).

Pure functions, no network; :mod:`trtserve_client.evaluate` feeds them a server's answers.

- SQuAD: ``normalize_answer`` (lower case, punctuation and the articles a/an/the removed,
  whitespace collapsed), exact match and token F1, each the maximum over the gold answers,
  averaged over the questions and reported in percent, as ``evaluate-v1.1.py`` and
  ``evaluate-v2.0.py`` do. In v2.0 an unanswerable question's gold answer is the empty string
  and F1 between empty and non-empty token lists is their equality; the report adds the
  HasAns / NoAns split.
- Entities: chunks from IOB tags as ``seqeval.metrics.sequence_labeling.get_entities`` finds
  them in its default (non-strict) mode, micro precision / recall / F1 over (type, start, end).
"""
from __future__ import annotations

import collections
import re
import string
from collections.abc import Sequence

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = set(string.punctuation)


def normalize_answer(s: str) -> str:
    """Lower text and remove punctuation, articles and extra whitespace (the SQuAD script's)."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in _PUNCTUATION)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def exact_match(prediction: str, gold: str) -> int:
    return int(normalize_answer(prediction) == normalize_answer(gold))


def f1(prediction: str, gold: str) -> float:
    """Token F1 after normalization; v2.0's rule for empty answers (equality) included."""
    pred_tokens, gold_tokens = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not pred_tokens or not gold_tokens:
        return float(pred_tokens == gold_tokens)
    common = collections.Counter(pred_tokens) & collections.Counter(gold_tokens)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred_tokens), same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def squad_scores(predictions: dict[str, str], golds: dict[str, list[str]]) -> dict[str, float]:
    """EM and F1 in percent over the questions of ``golds`` (id -> gold texts; [] = unanswerable).

    A question without a prediction counts as answered with the empty string (v2.0's script;
    v1.1's counts it as wrong, which is the same unless the gold is empty).
    """
    if not golds:
        raise ValueError("no questions to score")
    exact, f1s, has_ans, no_ans = {}, {}, [], []
    for qid, answers in golds.items():
        answers = [a for a in answers if normalize_answer(a)] or [""]
        prediction = predictions.get(qid, "")
        exact[qid] = max(exact_match(prediction, a) for a in answers)
        f1s[qid] = max(f1(prediction, a) for a in answers)
        (has_ans if answers != [""] else no_ans).append(qid)
    report = {"exact": 100.0 * sum(exact.values()) / len(golds), "f1": 100.0 * sum(f1s.values()) / len(golds),
              "total": len(golds)}
    for name, ids in (("HasAns", has_ans), ("NoAns", no_ans)):
        if ids and no_ans:  # the split only where unanswerable questions exist (v2.0)
            report[f"{name}_exact"] = 100.0 * sum(exact[i] for i in ids) / len(ids)
            report[f"{name}_f1"] = 100.0 * sum(f1s[i] for i in ids) / len(ids)
            report[f"{name}_total"] = len(ids)
    return report


# ---- entities (seqeval's default mode) ----------------------------------------------------

def _end_of_chunk(prev_tag: str, tag: str, prev_type: str, type_: str) -> bool:
    return (prev_tag in ("E", "S")
            or prev_tag == "B" and tag in ("B", "S", "O")
            or prev_tag == "I" and tag in ("B", "S", "O")
            or prev_tag not in ("O", ".") and prev_type != type_)


def _start_of_chunk(prev_tag: str, tag: str, prev_type: str, type_: str) -> bool:
    return (tag in ("B", "S")
            or prev_tag in ("E", "S", "O") and tag in ("E", "I")
            or tag not in ("O", ".") and prev_type != type_)


def get_entities(tags: Sequence[str] | Sequence[Sequence[str]]) -> list[tuple[str, int, int]]:
    """(type, first, last) chunks of an IOB tag sequence (or of sentences, joined with ``O``)."""
    if any(isinstance(s, (list, tuple)) for s in tags):
        tags = [t for sentence in tags for t in [*sentence, "O"]]
    prev_tag, prev_type, begin, chunks = "O", "", 0, []
    for i, chunk in enumerate([*tags, "O"]):
        tag = chunk[0]
        type_ = chunk[1:].split("-", maxsplit=1)[-1] or "_"
        if _end_of_chunk(prev_tag, tag, prev_type, type_):
            chunks.append((prev_type, begin, i - 1))
        if _start_of_chunk(prev_tag, tag, prev_type, type_):
            begin = i
        prev_tag, prev_type = tag, type_
    return chunks


def entity_scores(gold: Sequence[Sequence[str]], predicted: Sequence[Sequence[str]]) -> dict[str, float]:
    """Micro precision / recall / F1 over entity chunks, as seqeval's classification_report."""
    if len(gold) != len(predicted) or any(len(g) != len(p) for g, p in zip(gold, predicted)):
        raise ValueError("gold and predicted tag sequences differ in length")
    true_set, pred_set = set(get_entities([list(s) for s in gold])), set(get_entities([list(s) for s in predicted]))
    correct = len(true_set & pred_set)
    precision = correct / len(pred_set) if pred_set else 0.0
    recall = correct / len(true_set) if true_set else 0.0
    score = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": score, "true_entities": len(true_set),
            "predicted_entities": len(pred_set), "correct": correct}
