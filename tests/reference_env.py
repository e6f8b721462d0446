"""The Hugging Face reference of the qa / ner exactness tests, run in the test-only venv.

``make test`` (through ``make ref-venv``) creates ``.venv-ref`` with transformers 4.57.1 beside
the project's CPU torch: transformers 5, the project's pin, removed the question-answering
pipeline. Tests call :func:`run_pipeline`, which runs ``tests/reference/hf_pipelines.py`` there
in a subprocess and returns the pipeline's outputs as JSON values.
"""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Sequence

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
REF_PYTHON = Path(os.environ.get("TRTSERVE_REF_PYTHON", REPO_ROOT / ".venv-ref" / "bin" / "python"))
SCRIPT = REPO_ROOT / "tests" / "reference" / "hf_pipelines.py"
REFERENCE_TRANSFORMERS = "4.57.1"


def reference_python() -> Path:
    if not REF_PYTHON.exists():
        pytest.fail(f"the reference environment is missing ({REF_PYTHON}); `make ref-venv` creates it "
                    f"(`make test` does so first)")
    return REF_PYTHON


def run_pipelines(cases: Sequence[dict], timeout_s: float = 1800) -> list[list]:
    """Per case ``{"task", "checkpoint", "settings", "items"}``, one pipeline result per item
    (QA: the list of answers; NER: the list of entities), all in one reference process."""
    request = {"cases": [dict(c, checkpoint=str(c["checkpoint"]), items=list(c["items"])) for c in cases]}
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONNOUSERSITE="1")
    env.pop("PYTHONPATH", None)
    proc = subprocess.run([str(reference_python()), str(SCRIPT)], input=json.dumps(request), capture_output=True,
                          text=True, timeout=timeout_s, env=env, cwd=REPO_ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"reference pipeline failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    answer = json.loads(proc.stdout)
    assert answer["transformers"] == REFERENCE_TRANSFORMERS, answer["transformers"]
    return answer["results"]
