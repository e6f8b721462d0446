"""Every NER aggregation strategy served by the real Triton server equals the Hugging Face pipeline.

The default ``ner`` deployment serves ``simple`` (tests/functional/test_qa_ner.py, HTTP and gRPC).
Here the same spec is built once per other strategy (``none``, ``first``, ``average``, ``max``),
changing only ``[token_classification] aggregation_strategy`` (and ``stride = 0`` for ``none``,
which the pipeline refuses with a stride), each as its own deployment ``ner_<strategy>`` served by
one server, and all 220 real texts are compared with ``pipeline("token-classification")`` of
transformers 4.57.1 on the same checkpoint: every key equal, scores within 1e-3. The four
deployments reuse the ``ner`` export (the export's fingerprint does not depend on the name or the
strategy; its folder is hard-linked), so the cost is one server start and the requests.
"""
from __future__ import annotations

import os
import shutil
import tomllib

import pytest

from tests.conftest import DEPLOYMENTS
from tests.windowed_models import NER_CASES, chunks, same_entities

from .test_qa_ner import concurrently, entities

OTHER_STRATEGIES = tuple(c for c in NER_CASES if c.aggregation_strategy != "simple")


def strategy_spec(case):
    """deployments/ner.toml as deployment ``ner_<strategy>`` with the case's strategy and stride."""
    from trtserve_build.core.spec import parse_spec

    data = tomllib.loads((DEPLOYMENTS / "ner.toml").read_text())
    data["name"] = f"ner_{case.aggregation_strategy}"
    data["token_classification"].update(aggregation_strategy=case.aggregation_strategy, stride=case.stride)
    return parse_spec(data, source=DEPLOYMENTS / "ner.toml")


@pytest.fixture(scope="module")
def strategy_server(tmp_path_factory, ner_spec, ner_checkpoint):
    from trtserve_build.core.paths import export_dir
    from trtserve_build.pipeline.build import build_variant
    from trtserve_build.pipeline.steps import export
    from trtserve_server.embedded import EmbeddedServer, Ports

    export(ner_spec)
    specs = [strategy_spec(case) for case in OTHER_STRATEGIES]
    for spec in specs:
        if not export_dir(spec).exists():  # same fingerprint: the build finds it current
            shutil.copytree(export_dir(ner_spec), export_dir(spec), copy_function=os.link)
    repository = build_variant(specs, "cpu", tmp_path_factory.mktemp("ner_strategies") / "cpu")
    log = tmp_path_factory.mktemp("logs") / "triton-ner-strategies.log"
    with EmbeddedServer(repository, Ports.free(), log_path=log) as srv:
        srv.wait_ready(timeout_s=300)
        yield srv


@pytest.mark.parametrize("case", OTHER_STRATEGIES, ids=lambda c: c.aggregation_strategy)
def test_served_ner_equals_the_pipeline_for_every_strategy(strategy_server, case, ner_texts, qa_ner_references):
    model = f"ner_{case.aggregation_strategy}"
    served = [e for part in concurrently(strategy_server, "grpc", lambda c, texts: entities(c, texts, model),
                                          chunks(ner_texts)) for e in part]
    expected = qa_ner_references[case.aggregation_strategy]
    problems = [f"text {i}: {d}" for i, (g, w) in enumerate(zip(served, expected)) if (d := same_entities(g, w))]
    assert len(served) == len(expected) == len(ner_texts) >= 200
    assert sum(len(e) for e in served) > 0, "the strategy found no entity at all in 220 texts"
    assert not problems, f"{model}: {len(problems)} of {len(ner_texts)} differ, first: {problems[:5]}"
