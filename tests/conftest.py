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
def qa_spec():
    from trtserve_build.core.spec import load_spec

    return load_spec(DEPLOYMENTS / "qa.toml")


@pytest.fixture(scope="session")
def ner_spec():
    from trtserve_build.core.spec import load_spec

    return load_spec(DEPLOYMENTS / "ner.toml")


@pytest.fixture(scope="session")
def qa_checkpoint(qa_spec):
    """The qa deployment's default weights: MiniLM with its seeded head (made by the build)."""
    from trtserve_build.pipeline.steps import ensure_seeded_head

    return ensure_seeded_head(qa_spec)


@pytest.fixture(scope="session")
def ner_checkpoint(ner_spec):
    """The ner deployment's default weights: MiniLM with its seeded CoNLL-labelled head."""
    from trtserve_build.pipeline.steps import ensure_seeded_head

    return ensure_seeded_head(ner_spec)


@pytest.fixture(scope="session")
def qa_tokenizers(qa_checkpoint):
    """The served QA tokenizer for each QA case of the exactness tests."""
    from tests.windowed_models import QA_CASES
    import trtserve_contract as contract
    from trtserve_backend.windows import WindowTokenizer

    return {case.name: WindowTokenizer.from_file(str(qa_checkpoint / "tokenizer.json"), contract.QUESTION_ANSWERING,
                                                 case.window_settings()) for case in QA_CASES}


@pytest.fixture(scope="session")
def qa_ner_references(qa_checkpoint, ner_checkpoint, qa_pairs, ner_texts, qa_tokenizers):
    """Every pipeline result of the exactness tests, from one reference process (transformers
    4.57.1 in .venv-ref): {QA case name | NER aggregation strategy: [result per item]}."""
    from tests.reference_env import run_pipelines
    from tests.windowed_models import NER_CASES, QA_CASES, qa_case_items

    cases, names = [], []
    for case in QA_CASES:
        items = qa_case_items(case, qa_pairs)
        # the pipeline gets the questions the served tokenizer encodes: whole wherever the pipeline
        # can window them (a cut question is one the pipeline's tokenizer would reject)
        questions = qa_tokenizers[case.name].truncate_questions([q for q, _ in items], [c for _, c in items])
        cases.append({"task": "question-answering", "checkpoint": qa_checkpoint, "settings": case.pipeline_settings(),
                      "items": [{"question": q, "context": c} for q, (_, c) in zip(questions, items)]})
        names.append(case.name)
    for case in NER_CASES:
        cases.append({"task": "token-classification", "checkpoint": ner_checkpoint,
                      "settings": case.pipeline_settings(), "items": ner_texts})
        names.append(case.aggregation_strategy)
    return dict(zip(names, run_pipelines(cases)))


# ---- GPT-2 (issue 11): a tiny random-weight checkpoint, its ONNX export, real prompts ----------
GPT2_PROMPTS_FILE = REPO_ROOT / "loadtest" / "data" / "review_snippets.txt"


@pytest.fixture(scope="session")
def gpt2_tiny_checkpoint():
    """GPT-2 architecture (2 layers, 64 wide, the real 50,257-token vocabulary), seeded random weights."""
    from trtserve_build.core.paths import cache_dir
    from trtserve_build.models.gpt2 import random_checkpoint

    return random_checkpoint(cache_dir() / "checkpoints" / "gpt2-tiny-random", size="tiny", seed=0)


@pytest.fixture(scope="session")
def gpt2_tiny_onnx(gpt2_tiny_checkpoint, tmp_path_factory):
    """The checkpoint exported with past key/values (checked against PyTorch by the export stage)."""
    from trtserve_build.stages.decoder_export import export_decoder_onnx

    path, _, _ = export_decoder_onnx(gpt2_tiny_checkpoint, tmp_path_factory.mktemp("gpt2-onnx"))
    return path


@pytest.fixture(scope="session")
def gpt2_prompts():
    """Real text: review snippets shipped with the project (first 60 lines)."""
    lines = [line.strip() for line in GPT2_PROMPTS_FILE.read_text(encoding="utf-8").splitlines() if line.strip()]
    return lines[:60]
