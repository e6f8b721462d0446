"""Real text for the question-answering and NER models: cloze questions over review snippets.

No SQuAD or CoNLL data reaches this machine, but the shipped review snippets
(``data/review_snippets.txt``) are real English. From them, generically and reproducibly:

- QA pairs: a context is a run of consecutive snippets (from one sentence to several model
  windows long); the question is one of its sentences with a span of one to three words
  replaced by "what" (a cloze question, the construction of cloze reading-comprehension sets);
  the removed words are the gold answer, with their character offset in the context, so the
  pairs also serve as a small SQuAD-format file for ``make eval-qa``.
- NER texts: single snippets (which name actors, directors and films) and runs of snippets long
  enough to need several windows.

Pure Python, seeded: the same corpus and seed give the same pairs. Shared by the exactness
tests, the Locust users and the evaluation examples.
"""
from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from typing import Sequence

#: A word that can be asked about: letters (and inner apostrophes/hyphens), 3+ characters.
_WORD = re.compile(r"[A-Za-z][A-Za-z'\-]*[A-Za-z]")


@dataclass(frozen=True)
class QAPair:
    question: str
    context: str
    answer: str
    answer_start: int  # character offset of ``answer`` in ``context``

    def __post_init__(self) -> None:
        if self.context[self.answer_start:self.answer_start + len(self.answer)] != self.answer:
            raise ValueError(f"answer {self.answer!r} is not at {self.answer_start} in the context")


def _context_sizes(rng: random.Random, long_fraction: float) -> int:
    """Snippets per context: mostly short; ``long_fraction`` of them span several windows."""
    if rng.random() < long_fraction:
        return rng.randint(20, 60)  # ~600-1,800 tokens: 3-8 windows of 384
    return rng.randint(1, 6)


def cloze_pairs(corpus: Sequence[str], count: int, seed: int = 14, long_fraction: float = 0.25) -> list[QAPair]:
    """``count`` (question, context, answer) triples built from consecutive corpus lines."""
    if len(corpus) < 60:
        raise ValueError(f"need at least 60 corpus lines, got {len(corpus)}")
    rng = random.Random(seed)
    pairs: list[QAPair] = []
    while len(pairs) < count:
        size = _context_sizes(rng, long_fraction)
        first = rng.randrange(len(corpus) - size)
        sentences = list(corpus[first:first + size])
        which = rng.randrange(size)
        words = list(_WORD.finditer(sentences[which]))
        if len(words) < 4:
            continue
        span = rng.randint(1, 3)
        i = rng.randrange(len(words) - span + 1)
        a, b = words[i].start(), words[i + span - 1].end()
        sentence = sentences[which]
        question = (sentence[:a] + "what" + sentence[b:]).rstrip(" .!") + "?"
        context = " ".join(sentences)
        offset = sum(len(s) + 1 for s in sentences[:which]) + a
        pairs.append(QAPair(question, context, sentence[a:b], offset))
    return pairs


def ner_texts(corpus: Sequence[str], count: int, seed: int = 14, long_fraction: float = 0.1) -> list[str]:
    """``count`` texts: single snippets, and runs of 12-30 snippets (several windows of 128-256)."""
    rng = random.Random(seed)
    texts = []
    for _ in range(count):
        size = rng.randint(12, 30) if rng.random() < long_fraction else 1
        first = rng.randrange(len(corpus) - size)
        texts.append(" ".join(corpus[first:first + size]))
    return texts


def squad_json(pairs: Sequence[QAPair], version: str = "1.1", title: str = "review-snippets") -> str:
    """The pairs as a SQuAD file (v1.1 layout; v2.0 adds ``is_impossible``)."""
    paragraphs = []
    for n, p in enumerate(pairs):
        qa = {"id": f"q{n}", "question": p.question, "answers": [{"text": p.answer, "answer_start": p.answer_start}]}
        if version == "2.0":
            qa["is_impossible"] = False
        paragraphs.append({"context": p.context, "qas": [qa]})
    return json.dumps({"version": version, "data": [{"title": title, "paragraphs": paragraphs}]}, ensure_ascii=False)
