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
FUNCTIONAL_DIR = Path(__file__).resolve().parent / "functional"


def pytest_collection_modifyitems(config, items):
    """Every test under tests/functional/ carries the ``functional`` marker (it starts the real
    Triton server), so ``-m "not functional"`` runs the fast tier only. A ``pytestmark`` in a
    conftest.py would be ignored by pytest; the marker is applied here, to the items."""
    for item in items:
        if FUNCTIONAL_DIR in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.functional)


@pytest.fixture(scope="session")
def sentiment_spec():
    from trtserve_build.core.spec import load_spec

    return load_spec(DEPLOYMENTS / "sentiment.toml")


@pytest.fixture(scope="session")
def embed_spec():
    from trtserve_build.core.spec import load_spec

    return load_spec(DEPLOYMENTS / "embed.toml")
