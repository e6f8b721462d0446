"""The real texts each check runs on: validation (export, TorchScript), calibration, the
fidelity report's held-out and stress sets. Calibration reads the training split only; the
fidelity report scores the held-out split."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import trtserve_contract as contract
from loadtest.qa_ner_workload import cloze_pairs, ner_texts
from loadtest.workload import load_corpus

from ..core.errors import CalibrationError
from .datasets import corpus_texts, dataset_labels, load_dataset, split_holdout

#: The seeded split of a dataset the spec does not train on.
DEFAULT_HOLDOUT_FRACTION = 0.1
DEFAULT_SPLIT_SEED = 1234


def validation_texts(limit: int = 48) -> list[str]:
    """Real text for the ONNX-vs-PyTorch check: review snippets plus long and unusual ones."""
    texts = corpus_texts(limit=limit)
    long_text = " ".join(texts[:40])  # longer than any bucket: exercises truncation
    return texts + [long_text, "", "   ", "¡Qué película tan buena! 🎬🍿", "これは素晴らしい映画です。"]


def dataset_split(spec, dataset: str):
    """``(train, holdout)`` rows of ``dataset``: the spec's training split when it trains on
    that dataset, otherwise the same seeded 90/10 split. Calibration reads ``train`` only;
    the fidelity report scores ``holdout``."""
    t = spec.training
    if t is not None and t.dataset == dataset:
        fraction, seed = t.holdout_fraction, t.seed
    else:
        fraction, seed = DEFAULT_HOLDOUT_FRACTION, DEFAULT_SPLIT_SEED
    return split_holdout(load_dataset(dataset), fraction, seed)


def calibration_texts(spec) -> list[str]:
    """``samples`` texts of the spec's calibration dataset, from its training split."""
    p = spec.precision
    train, _ = dataset_split(spec, p.calibration_dataset)
    if len(train) < p.calibration_samples:
        raise CalibrationError(
            f"{spec.name}: {p.calibration_dataset} has {len(train)} training texts, "
            f"precision.calibration_samples asks for {p.calibration_samples}"
        )
    return [r.text for r in train[: p.calibration_samples]]


def stress_texts(corpus: Sequence[str]) -> list[str]:
    """Long, repetitive and unusual inputs (fixed; built from ``corpus`` sentences)."""
    joined = " ".join(corpus[:200])
    return [
        joined,                                   # far beyond every bucket: truncated
        " ".join(corpus[200:260]),
        "the " * 600,
        "great great great great " * 150,
        "terrible! " * 300,
        "!" * 2000,
        "a" * 3000,
        "ha" * 1500,
        "lol " * 500,
        "no. " * 400,
        "A GRIPPING, BEAUTIFULLY ACTED FILM!!! " * 40,
        "0123456789 " * 200,
        "3.14159265358979323846264338327950288419716939937510 " * 20,
        "https://example.com/path?query=1&x=2#frag " * 40,
        "def f(x):\n    return x ** 2  # comment\n" * 40,
        "<div class='review'><p>Great &amp; moving</p></div>" * 30,
        "😀🎬🍿🔥💯" * 200,
        "これは素晴らしい映画です。" * 60,
        "Очень скучный фильм, но актёры хорошие. " * 40,
        "هذا فيلم رائع جدا " * 60,
        "¡Qué película tan buena! ¿Verdad? " * 40,
        "zero\u200bwidth\u200bjoiners\u200b" * 150,
        "tab\tseparated\tvalues\t" * 150,
        "\n".join(["line"] * 500),
        "supercalifragilisticexpialidocious" * 60,
        "[CLS] [SEP] [PAD] [MASK] [UNK] " * 80,
        "# " * 800,
        "x",
        "",
        "   ",
        "?",
        "ok",
    ]


@dataclass
class EvalSet:
    name: str
    texts: list[str]
    labels: list[int] | None = None


def eval_sets(spec, samples: int | None = None) -> list[EvalSet]:
    """``real`` (held-out texts of the spec's dataset, with labels when they are the model's)
    and ``stress``."""
    dataset = spec.training.dataset if spec.training else spec.precision.calibration_dataset
    train, holdout = dataset_split(spec, dataset)
    n = samples or spec.precision.fidelity_samples
    rows = holdout[:n]
    labelled = tuple(spec.model.labels) == tuple(dataset_labels(dataset)) and bool(spec.model.labels)
    real = EvalSet("real", [r.text for r in rows], [r.label for r in rows] if labelled else None)
    return [real, EvalSet("stress", stress_texts([r.text for r in train]))]


#: Items of the windowed tasks' fidelity set at most (the exactness tests use 220): a quarter of
#: the QA contexts span 3-8 windows, each window is an engine row.
WINDOWED_EVAL_ITEMS = 220


def windowed_eval_items(task: str, samples: int | None = None) -> list:
    """The real items the question-answering / token-classification fidelity report runs on:
    the cloze (question, context) pairs and the NER texts of the exactness tests and the load
    test (``loadtest.qa_ner_workload``, from the shipped review snippets; one implementation)."""
    n = min(samples or WINDOWED_EVAL_ITEMS, WINDOWED_EVAL_ITEMS)
    corpus = load_corpus()
    if task == contract.QUESTION_ANSWERING:
        return [(p.question, p.context) for p in cloze_pairs(corpus, WINDOWED_EVAL_ITEMS)][:n]
    if task == contract.TOKEN_CLASSIFICATION:
        return ner_texts(corpus, WINDOWED_EVAL_ITEMS)[:n]
    raise ValueError(f"no windowed items for task {task!r}")
