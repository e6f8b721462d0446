"""What the load test sends: real texts, single or in client-side batches, to the ensembles.

Pure Python (no Locust, no network), so the request mix is unit-tested and shared by the
Locust users and the overload benchmark.
"""
from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import trtserve_contract as contract

LOADTEST_DIR = Path(__file__).resolve().parent
#: Real movie-review sentences (see data/README.md); one text per line.
DEFAULT_CORPUS = LOADTEST_DIR / "data" / "review_snippets.txt"
#: The ensembles the project deploys (deployments/*.toml names).
DEFAULT_MODELS = ("sentiment", "embed")
#: Ensembles that take (QUESTION, CONTEXT) pairs instead of TEXT.
QA_MODELS = ("qa",)


class WorkloadError(ValueError):
    """A corpus or request-mix option is unusable; the message says which and why."""


def load_corpus(path: str | Path | None = None, max_texts: int | None = None) -> list[str]:
    """Non-blank lines of a UTF-8 text file, one text each (default: the shipped snippets).

    Texts keep their natural length distribution; nothing is padded or cut here (the
    tokenizer truncates at the spec's max_sequence_length, as it would for a real client).
    """
    path = Path(path) if path else DEFAULT_CORPUS
    try:
        raw = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise WorkloadError(f"corpus file not found: {path}") from None
    except UnicodeDecodeError as e:
        raise WorkloadError(f"corpus file {path} is not UTF-8 text: {e}") from e
    texts = [line.strip() for line in raw.splitlines() if line.strip()]
    if not texts:
        raise WorkloadError(f"corpus file {path} has no non-blank lines")
    return texts[:max_texts] if max_texts else texts


@dataclass(frozen=True)
class RequestMix:
    """Which model each request goes to and how many texts it carries.

    A request is a batch of ``batch_size`` texts with probability ``batch_fraction``, else a
    single text; the model is drawn uniformly from ``models``. Texts are drawn uniformly from
    the corpus, so request sizes follow the corpus's length distribution.
    """

    models: tuple[str, ...] = DEFAULT_MODELS
    batch_size: int = 8
    batch_fraction: float = 0.2

    def __post_init__(self) -> None:
        if not self.models or any(not m or not m.replace("_", "").isalnum() for m in self.models):
            raise WorkloadError(f"models must be non-empty Triton model names, got {self.models!r}")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise WorkloadError(f"batch_size must be an int >= 1, got {self.batch_size!r}")
        if not 0.0 <= self.batch_fraction <= 1.0:
            raise WorkloadError(f"batch_fraction must lie in [0, 1], got {self.batch_fraction!r}")

    @classmethod
    def parse_models(cls, text: str) -> tuple[str, ...]:
        """``"sentiment,embed"`` -> ``("sentiment", "embed")``."""
        return tuple(m.strip() for m in text.split(",") if m.strip())

    def next_request(self, corpus: Sequence[str], rng: random.Random) -> tuple[str, list[str]]:
        """(model, texts) for one request."""
        model = self.models[0] if len(self.models) == 1 else rng.choice(self.models)
        count = self.batch_size if self.batch_fraction and rng.random() < self.batch_fraction else 1
        return model, [corpus[rng.randrange(len(corpus))] for _ in range(count)]

    def next_inputs(self, corpus: Sequence[str], pairs: Sequence, rng: random.Random) -> tuple[str, dict[str, list[str]]]:
        """(model, {input name: one text per row}) for one request: ``TEXT`` rows, or for a QA
        model as many (``QUESTION``, ``CONTEXT``) pairs drawn from ``pairs`` (QAPair objects)."""
        model, texts = self.next_request(corpus, rng)
        if model not in QA_MODELS:
            return model, {contract.TEXT: texts}
        chosen = [pairs[rng.randrange(len(pairs))] for _ in texts]
        return model, {contract.QUESTION: [p.question for p in chosen], contract.CONTEXT: [p.context for p in chosen]}


def request_name(model: str, count: int) -> str:
    """The Locust stats entry name: single texts and batches are reported apart."""
    return f"{model} x{count}"


def text_array(texts: Sequence[str]) -> np.ndarray:
    """The ensembles' ``TEXT`` input: BYTES ``[n, 1]``."""
    array = np.empty((len(texts), 1), dtype=np.object_)
    for row, text in enumerate(texts):
        array[row, 0] = text.encode("utf-8")
    return array
