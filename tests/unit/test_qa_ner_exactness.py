"""The serve-side QA and NER logic equals the Hugging Face pipelines on real text.

The served tokenizer (trtserve_backend.windows) and postprocess (trtserve_backend.qa / .ner)
run here with PyTorch as the engine (in the project's venv, transformers 5); the references are
``pipeline("question-answering")`` and ``pipeline("token-classification")`` of transformers
4.57.1 in the test-only venv, on the same seeded checkpoints, texts and settings. Requests
carry 8 items each, so every window of a request shares one padded engine batch, as served.
"""
from __future__ import annotations

import pytest

from tests.windowed_models import (NER_CASES, QA_CASES, TorchEngine, chunks, qa_case_items, qa_items, same_answer,
                                   same_entities)
import trtserve_contract as contract
from trtserve_backend.ner import NERSettings, TokenVocabulary, entities_for_item
from trtserve_backend.qa import answers_for_item
from trtserve_backend.windows import WindowTokenizer, split_windows, window_lengths

pytestmark = pytest.mark.slow


def test_the_corpus_has_long_contexts_and_long_questions(qa_pairs, ner_texts, qa_tokenizers):
    assert len(qa_pairs) >= 200 and len(ner_texts) >= 200
    tok = qa_tokenizers["defaults"]
    per_item = tok.encode_requests([[item] for item in qa_items(QA_CASES[0], qa_pairs)])
    windows = [rows[contract.INPUT_IDS].shape[0] for rows in per_item]
    assert sum(w >= 3 for w in windows) >= 20, windows
    items = qa_items(QA_CASES[0], qa_pairs)
    questions, contexts = [q for q, _ in items], [c for _, c in items]
    lengths = [len(e.ids) for e in tok.question_tokenizer.encode_batch(questions, add_special_tokens=False)]
    assert sum(n > tok.settings.max_question_length for n in lengths) >= 3
    # ... and the served tokenizer keeps them whole, as the pipeline does on a fast tokenizer
    assert tok.truncate_questions(questions, contexts) == questions


@pytest.mark.parametrize("case", QA_CASES, ids=lambda c: c.name)
def test_qa_answers_equal_the_pipeline(case, qa_checkpoint, qa_pairs, qa_tokenizers, qa_ner_references):
    engine = TorchEngine(qa_checkpoint, contract.QUESTION_ANSWERING)
    tok = qa_tokenizers[case.name]
    items = qa_case_items(case, qa_pairs)
    expected = qa_ner_references[case.name]
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
def test_ner_entities_equal_the_pipeline(case, ner_checkpoint, ner_texts, qa_ner_references):
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
    expected = qa_ner_references[case.aggregation_strategy]
    problems = [f"text {i}: {d}" for i, (g, w) in enumerate(zip(served, expected)) if (d := same_entities(g, w))]
    assert len(served) == len(expected) == len(ner_texts)
    assert not problems, f"{len(problems)} differences, first: {problems[:5]}"
    assert sum(len(e) for e in served) > len(ner_texts)  # the seeded head does tag entities
