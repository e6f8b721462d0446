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
