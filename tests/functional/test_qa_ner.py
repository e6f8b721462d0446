"""qa and ner served by the real Triton server equal the Hugging Face pipelines on real text.

The served deployments (deployments/qa.toml, ner.toml: the pipelines' settings, MiniLM with its
seeded heads) against ``pipeline("question-answering")`` / ``pipeline("token-classification")``
of transformers 4.57.1 (the test-only reference venv) on the same checkpoint folders, over HTTP
and gRPC: ANSWER, START, END and the entities exactly, SCORE within 1e-3. Requests carry
several items of different lengths, so windows of long and short contexts share encoder batches.
"""
from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import trtserve_contract as contract

from tests.windowed_models import NER_CASES, QA_CASES, chunks, qa_case_items, same_answer, same_entities
from trtserve_client.results import Answer

from .conftest import served_models, text_input

DEFAULTS = QA_CASES[0]
SIMPLE = next(c for c in NER_CASES if c.aggregation_strategy == "simple")


def test_the_deployments_use_the_pipeline_settings_the_references_ran_with(qa_spec, ner_spec):
    qa = qa_spec.windows
    assert (qa_spec.model.max_sequence_length, qa.doc_stride, qa.max_question_length, qa.max_answer_length,
            qa.n_best, qa.handle_impossible_answer, qa.align_to_words) == (
        DEFAULTS.max_seq_len, DEFAULTS.doc_stride, DEFAULTS.max_question_len, DEFAULTS.max_answer_len,
        DEFAULTS.top_k, DEFAULTS.handle_impossible_answer, DEFAULTS.align_to_words)
    assert (ner_spec.model.max_sequence_length, ner_spec.windows.stride, ner_spec.windows.aggregation_strategy) == (
        SIMPLE.max_length, SIMPLE.stride, SIMPLE.aggregation_strategy)


def ask(raw_client, pairs) -> list[Answer]:
    tc = raw_client.tc
    inputs = [text_input(tc, [q for q, _ in pairs], contract.QUESTION),
              text_input(tc, [c for _, c in pairs], contract.CONTEXT)]
    result = raw_client.infer("qa", inputs)
    rows = [result.as_numpy(n).reshape(-1) for n in (contract.ANSWER, contract.SCORE, contract.START, contract.END)]
    return [Answer(a.decode("utf-8"), float(s), int(b), int(e)) for a, s, b, e in zip(*rows)]


def entities(raw_client, texts, model: str = "ner") -> list[list[dict]]:
    result = raw_client.infer(model, [text_input(raw_client.tc, texts)])
    return [json.loads(x) for x in result.as_numpy(contract.ENTITIES).reshape(-1)]


def concurrently(server, protocol, call, requests, threads=4):
    """``call(client, request)`` for each request from ``threads`` threads, one client per thread
    (tritonclient's HTTP client is gevent-based and must not be shared between threads)."""
    local, clients = threading.local(), []

    def run(request):
        if not hasattr(local, "client"):
            if protocol == "http":
                import tritonclient.http as tc

                local.client = tc.InferenceServerClient(server.http_url)
            else:
                import tritonclient.grpc as tc

                local.client = tc.InferenceServerClient(server.grpc_url)
            local.client.tc = tc
            clients.append(local.client)
        return call(local.client, request)

    try:
        with ThreadPoolExecutor(threads) as pool:
            return list(pool.map(run, requests))
    finally:
        for client in clients:
            client.close()


#: Items checked over HTTP: the whole set goes over gRPC; the transports share everything past
#: decoding the request, so HTTP gets the first items (long contexts among them), which keeps
#: `make test` inside its time budget.
HTTP_ITEMS = 64


def transport_share(protocol: str, items: list, expected: list) -> tuple[list, list]:
    n = HTTP_ITEMS if protocol == "http" else len(items)
    return items[:n], expected[:n]


def test_served_qa_equals_the_pipeline(server, protocol, qa_pairs, qa_ner_references):
    everything = qa_case_items(DEFAULTS, qa_pairs)
    items, expected = transport_share(protocol, everything, qa_ner_references[DEFAULTS.name])
    # two clients at a time, 4 pairs a request (up to ~28 windows): windows share encoder batches,
    # and no request waits past the queue timeout on a busy 2-core CPU host
    served = [a for answers in concurrently(server, protocol, ask, chunks(items, 4), threads=2) for a in answers]
    problems = [f"pair {i}: {d}" for i, (got, want) in enumerate(zip(served, expected))
                if (d := same_answer(got, want[0] if want else {"answer": "", "score": 0.0, "start": 0, "end": 0}))]
    assert len(everything) >= 200 and len(items) >= min(HTTP_ITEMS, len(everything))
    assert len(served) == len(expected) == len(items)
    if protocol == "http":
        assert any(len(c) > 3000 for _, c in items), "the HTTP share must hold contexts several windows long"
    assert not problems, f"{len(problems)} of {len(items)} differ, first: {problems[:5]}"
    assert all(c[a.start:a.end] == a.text for (_, c), a in zip(items, served) if a.start >= 0)


def test_served_ner_equals_the_pipeline(server, protocol, ner_texts, qa_ner_references):
    texts, expected = transport_share(protocol, ner_texts, qa_ner_references[SIMPLE.aggregation_strategy])
    served = [e for part in concurrently(server, protocol, entities, chunks(texts)) for e in part]
    problems = [f"text {i}: {d}" for i, (g, w) in enumerate(zip(served, expected)) if (d := same_entities(g, w))]
    assert len(ner_texts) >= 200 and len(served) == len(expected) == len(texts)
    assert not problems, f"{len(problems)} of {len(texts)} differ, first: {problems[:5]}"


def test_results_do_not_depend_on_batch_neighbours(raw_client, qa_pairs, ner_texts):
    """The same items alone, and in requests with long and short neighbours, give the same results."""
    items = [(p.question, p.context) for p in qa_pairs[:24]]
    alone = [ask(raw_client, [item])[0] for item in items]
    mixed = [a for request in (items[:5], items[5:8], items[8:24]) for a in ask(raw_client, request)]
    for a, b in zip(alone, mixed):
        assert (a.text, a.start, a.end) == (b.text, b.start, b.end) and a.score == pytest.approx(b.score, abs=1e-5)
    texts = ner_texts[:24]
    alone_e = [entities(raw_client, [t])[0] for t in texts]
    mixed_e = entities(raw_client, texts[::-1])[::-1]
    assert all(same_entities(a, b, score_tol=1e-5) is None for a, b in zip(alone_e, mixed_e))


def test_windows_of_concurrent_requests_share_encoder_executions(server, protocol, qa_pairs, qa_tokenizers):
    """Every window is one encoder row; concurrent requests' rows run in shared executions (of the
    one model, which runs all windows of an execution in one engine call, or of the ensemble's
    encoder)."""
    import tritonclient.http as httpclient

    engine = served_models(server, "qa")["engine"]
    stats = httpclient.InferenceServerClient(server.http_url)

    def counts():
        s = stats.get_inference_statistics(engine)["model_stats"][0]
        return int(s["inference_count"]), int(s["execution_count"])

    before = counts()
    pairs = [(p.question, p.context) for p in qa_pairs[:48]]
    concurrently(server, protocol, lambda client, pair: ask(client, [pair]), pairs, threads=8)
    windows = sum(r[contract.INPUT_IDS].shape[0] for r in qa_tokenizers[DEFAULTS.name].encode_requests(
        [[p] for p in pairs]))
    expected = windows if engine == "qa_encoder" else len(pairs)
    # A Python model sends its responses before its execute() returns and Triton records the
    # execution's statistics after that: the last executions may land just after the answers.
    deadline = time.monotonic() + 10
    while (counts()[0] - before[0]) < expected and time.monotonic() < deadline:
        time.sleep(0.05)
    rows, executions = (a - b for a, b in zip(counts(), before))
    assert windows > len(pairs)  # long contexts bring several windows each
    # Triton counts the encoder's rows (windows), or the one model's items (one per request)
    assert rows == expected, (engine, rows, windows)
    assert executions < len(pairs), f"{rows} rows in {executions} executions of {engine} for {len(pairs)} requests"
    stats.close()


@pytest.mark.parametrize("task, option, sample", [
    ("qa", "--squad", "squad-v1.1-sample.json"),
    ("qa", "--squad", "squad-v2.0-sample.json"),
    ("ner", "--conll", "conll-sample.txt"),
])
def test_evaluation_commands_score_the_served_models(server, task, option, sample, tmp_path, capsys):
    """`make eval-qa` / `make eval-ner` (trtserve_client.evaluate) against the real server."""
    from tests.conftest import REPO_ROOT
    from trtserve_client import evaluate

    out = tmp_path / "report.json"
    args = [task, option, str(REPO_ROOT / "tests" / "data" / sample), "--url", server.grpc_url, "--output", str(out)]
    assert evaluate.main(args) == 0
    report = json.loads(out.read_text())
    if task == "qa":
        assert report["total"] in (3, 4) and 0 <= report["exact"] <= report["f1"] <= 100
        assert ("HasAns_exact" in report) == sample.startswith("squad-v2.0")
    else:
        assert report["sentences"] == 3 and report["true_entities"] == 5 and 0 <= report["f1"] <= 1
    assert "F1" in capsys.readouterr().out
