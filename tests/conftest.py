"""Shared fixtures. Functional fixtures live in tests/functional/conftest.py."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO_ROOT = Path(__file__).resolve().parents[1]
DEPLOYMENTS = REPO_ROOT / "deployments"


@pytest.fixture(scope="session")
def sentiment_spec():
    from trtserve_build.spec import load_spec

    return load_spec(DEPLOYMENTS / "sentiment.toml")


@pytest.fixture(scope="session")
def embed_spec():
    from trtserve_build.spec import load_spec

    return load_spec(DEPLOYMENTS / "embed.toml")


# ---- question answering / NER: real text, seeded checkpoints, the Hugging Face reference ----

QA_PAIRS = 220
NER_TEXTS = 220


@pytest.fixture(scope="session")
def review_corpus():
    from loadtest.workload import load_corpus

    return load_corpus()


@pytest.fixture(scope="session")
def qa_pairs(review_corpus):
    """Cloze questions over runs of real review snippets; a quarter of the contexts span 3-8 windows."""
    from loadtest.qa_ner_workload import cloze_pairs

    return cloze_pairs(review_corpus, QA_PAIRS)


@pytest.fixture(scope="session")
def ner_texts(review_corpus):
    from loadtest.qa_ner_workload import ner_texts as make

    return make(review_corpus, NER_TEXTS)


@pytest.fixture(scope="session")
def qa_checkpoint():
    from tests.windowed_models import seeded_checkpoint
    from trtserve_backend import contract

    return seeded_checkpoint(contract.QUESTION_ANSWERING, REPO_ROOT / ".cache" / "test-checkpoints" / "qa-seed14")


@pytest.fixture(scope="session")
def ner_checkpoint():
    from tests.windowed_models import seeded_checkpoint
    from trtserve_backend import contract

    return seeded_checkpoint(contract.TOKEN_CLASSIFICATION, REPO_ROOT / ".cache" / "test-checkpoints" / "ner-seed14")
