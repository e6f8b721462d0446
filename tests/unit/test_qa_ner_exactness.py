"""The serve-side QA and NER logic equals the Hugging Face pipelines on real text.

The served tokenizer (trtserve_backend.windows) and postprocess (trtserve_backend.qa / .ner)
run here with PyTorch as the engine (in the project's venv, transformers 5); the references are
``pipeline("question-answering")`` and ``pipeline("token-classification")`` of transformers
4.57.1 in the test-only venv, on the same seeded checkpoints, texts and settings. Requests
carry 8 items each, so every window of a request shares one padded engine batch, as served.
"""
from __future__ import annotations

import pytest

from tests.reference_env import run_pipelines
from tests.windowed_models import NER_CASES, QACase, TorchEngine, same_answer, same_entities
from trtserve_backend import contract
from trtserve_backend.ner import NERSettings, TokenVocabulary, entities_for_item
from trtserve_backend.qa import answers_for_item
from trtserve_backend.windows import WindowTokenizer, split_windows, window_lengths

pytestmark = pytest.mark.slow

QA_CASES = (
    QACase("defaults"),  # the pipeline's defaults; the qa deployment's settings
    QACase("n_best 3, null answer, short answers", top_k=3, handle_impossible_answer=True, max_answer_len=4),
    QACase("token offsets, 256/64 windows, 24-token questions", max_seq_len=256, doc_stride=64,
           max_question_len=24, align_to_words=False),
)
#: Items per request: the rows of all their windows form one engine batch.
REQUEST_ITEMS = 8
SUBSET = 64


def chunks(items, size=REQUEST_ITEMS):
    return [items[i:i + size] for i in range(0, len(items), size)]


def qa_items(case: QACase, pairs):
    """(question, context) per pair; a few questions made longer than max_question_len on purpose."""
    items = [(p.question, p.context) for p in pairs]
    for i in range(0, len(items), 37):
        q, c = items[i]
        items[i] = (" ".join(pairs[(i + j) % len(pairs)].question for j in range(1, 4)) + " " + q, c)
    return items


@pytest.fixture(scope="module")
def qa_tokenizers(qa_checkpoint):
    return {case.name: WindowTokenizer.from_file(str(qa_checkpoint / "tokenizer.json"), contract.QUESTION_ANSWERING,
                                                 case.window_settings()) for case in QA_CASES}


@pytest.fixture(scope="module")
def references(qa_checkpoint, ner_checkpoint, qa_pairs, ner_texts, qa_tokenizers):
    """All pipeline results in one reference process: {case name: [result per item]}."""
    cases, names = [], []
    for case in QA_CASES:
        items = qa_items(case, qa_pairs if case.name == "defaults" else qa_pairs[:SUBSET])
        # the served tokenizer cuts long questions to max_question_len tokens; the pipeline gets the cut text
        questions = qa_tokenizers[case.name].truncate_questions([q for q, _ in items])
        cases.append({"task": "question-answering", "checkpoint": qa_checkpoint, "settings": case.pipeline_settings(),
                      "items": [{"question": q, "context": c} for q, (_, c) in zip(questions, items)]})
        names.append(case.name)
    for case in NER_CASES:
        cases.append({"task": "token-classification", "checkpoint": ner_checkpoint,
                      "settings": case.pipeline_settings(), "items": ner_texts})
        names.append(case.aggregation_strategy)
    return dict(zip(names, run_pipelines(cases)))


def test_the_corpus_has_long_contexts_and_long_questions(qa_pairs, ner_texts, qa_tokenizers):
    assert len(qa_pairs) >= 200 and len(ner_texts) >= 200
    tok = qa_tokenizers["defaults"]
    windows = [rows[contract.INPUT_IDS].shape[0] for rows in tok.encode_requests([[i] for i in qa_items(QA_CASES[0], qa_pairs)])]
    assert sum(w >= 3 for w in windows) >= 20, windows
    questions = [q for q, _ in qa_items(QA_CASES[0], qa_pairs)]
    assert sum(a != b for a, b in zip(questions, tok.truncate_questions(questions))) >= 3


@pytest.mark.parametrize("case", QA_CASES, ids=lambda c: c.name)
def test_qa_answers_equal_the_pipeline(case, qa_checkpoint, qa_pairs, qa_tokenizers, references):
    engine = TorchEngine(qa_checkpoint, contract.QUESTION_ANSWERING)
    tok = qa_tokenizers[case.name]
    items = qa_items(case, qa_pairs if case.name == "defaults" else qa_pairs[:SUBSET])
    expected = references[case.name]
    served = []
    for request in chunks(items):
        [rows] = tok.encode_requests([request])
        logits = engine(rows)
        spans, lengths = rows[contract.TOKEN_SPANS], window_lengths(rows[contract.TOKEN_SPANS])
        for rows_of_item, (_, context) in zip(split_windows(rows[contract.WINDOW_ITEM]), request):
            served.append(answers_for_item(logits[rows_of_item], spans[rows_of_item], lengths[rows_of_item],
                                           context, case.qa_settings()))
    assert len(served) == len(expected) == len(items)
    problems = []
    for i, (got, want) in enumerate(zip(served, expected)):
        if len(got) != len(want):
            problems.append(f"item {i}: {len(got)} answers vs {len(want)}")
            continue
        problems += [f"item {i} answer {j}: {d}" for j, (g, w) in enumerate(zip(got, want))
                     if (d := same_answer(g, w)) is not None]
    assert not problems, f"{len(problems)} differences, first: {problems[:5]}"
    assert sum(1 for a in served if a and a[0].text) > len(items) // 2  # mostly real answers, not all empty


@pytest.mark.parametrize("case", NER_CASES, ids=lambda c: c.aggregation_strategy)
def test_ner_entities_equal_the_pipeline(case, ner_checkpoint, ner_texts, references):
    import json

    engine = TorchEngine(ner_checkpoint, contract.TOKEN_CLASSIFICATION)
    tokenizer_file = str(ner_checkpoint / "tokenizer.json")
    tok = WindowTokenizer.from_file(tokenizer_file, contract.TOKEN_CLASSIFICATION, case.window_settings())
    vocab = TokenVocabulary.from_file(tokenizer_file)
    labels = tuple(json.loads((ner_checkpoint / "config.json").read_text())["id2label"][str(i)] for i in range(9))
    settings = NERSettings(labels, case.aggregation_strategy)
    served = []
    for request in chunks(ner_texts):
        [rows] = tok.encode_requests([request])
        logits = engine(rows)
        spans, lengths = rows[contract.TOKEN_SPANS], window_lengths(rows[contract.TOKEN_SPANS])
        for r, text in zip(split_windows(rows[contract.WINDOW_ITEM]), request):
            served.append(entities_for_item(logits[r], rows[contract.INPUT_IDS][r], spans[r], lengths[r], text,
                                            settings, vocab))
    expected = references[case.aggregation_strategy]
    problems = [f"text {i}: {d}" for i, (g, w) in enumerate(zip(served, expected)) if (d := same_entities(g, w))]
    assert len(served) == len(expected) == len(ner_texts)
    assert not problems, f"{len(problems)} differences, first: {problems[:5]}"
    assert sum(len(e) for e in served) > len(ner_texts)  # the seeded head does tag entities
