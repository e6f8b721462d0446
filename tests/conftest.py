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


# ---- GPT-2 (issue 11): a tiny random-weight checkpoint, its ONNX export, real prompts ----------
GPT2_PROMPTS_FILE = REPO_ROOT / "loadtest" / "data" / "review_snippets.txt"


@pytest.fixture(scope="session")
def gpt2_tiny_checkpoint():
    """GPT-2 architecture (2 layers, 64 wide, the real 50,257-token vocabulary), seeded random weights."""
    from trtserve_build.core.paths import cache_dir
    from trtserve_gpt2.checkpoints import random_checkpoint

    return random_checkpoint(cache_dir() / "checkpoints" / "gpt2-tiny-random", size="tiny", seed=0)


@pytest.fixture(scope="session")
def gpt2_tiny_onnx(gpt2_tiny_checkpoint, tmp_path_factory):
    """The checkpoint exported with past key/values (checked against PyTorch by the export)."""
    from trtserve_gpt2.export import export_decoder

    return export_decoder(gpt2_tiny_checkpoint, tmp_path_factory.mktemp("gpt2-onnx"))


@pytest.fixture(scope="session")
def gpt2_prompts():
    """Real text: review snippets shipped with the project (first 60 lines)."""
    lines = [line.strip() for line in GPT2_PROMPTS_FILE.read_text(encoding="utf-8").splitlines() if line.strip()]
    return lines[:60]
