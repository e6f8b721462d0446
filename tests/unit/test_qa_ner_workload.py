"""Real-text QA pairs and NER texts (loadtest/qa_ner_workload.py) and the load test's QA requests."""
from __future__ import annotations

import json
import random

import pytest

from loadtest.qa_ner_workload import QAPair, cloze_pairs, ner_texts, squad_json
from loadtest.workload import RequestMix, load_corpus
import trtserve_contract as contract


@pytest.fixture(scope="module")
def corpus():
    return load_corpus()


def test_cloze_pairs_are_real_text_with_their_answer_in_place(corpus):
    pairs = cloze_pairs(corpus, 220)
    assert len(pairs) == 220 and pairs == cloze_pairs(corpus, 220)  # seeded
    for p in pairs:
        assert p.context[p.answer_start:p.answer_start + len(p.answer)] == p.answer
        assert "what" in p.question and p.question.endswith("?") and p.answer not in ("", "what")
    long = [p for p in pairs if len(p.context) > 2500]  # several 384-token windows
    assert len(long) >= 30
    assert len({p.context for p in pairs}) > 200


def test_a_misplaced_answer_is_rejected():
    with pytest.raises(ValueError, match="is not at"):
        QAPair("what?", "some context", "context", 0)


def test_squad_export_round_trips(corpus, tmp_path):
    from trtserve_client.evaluate import read_squad

    pairs = cloze_pairs(corpus, 5)
    for version in ("1.1", "2.0"):
        path = tmp_path / f"squad-{version}.json"
        path.write_text(squad_json(pairs, version))
        got_version, questions = read_squad(path)
        assert got_version == version and [q["answers"] for q in questions] == [[p.answer] for p in pairs]
    assert json.loads(squad_json(pairs, "2.0"))["data"][0]["paragraphs"][0]["qas"][0]["is_impossible"] is False


def test_ner_texts_mix_sentences_and_long_runs(corpus):
    texts = ner_texts(corpus, 220)
    assert len(texts) == 220 and sum(len(t) > 1000 for t in texts) >= 10
    assert all(t.strip() for t in texts)


def test_the_load_test_sends_question_context_pairs_to_qa(corpus):
    pairs = cloze_pairs(corpus, 20)
    mix = RequestMix(models=("qa", "ner"), batch_size=4, batch_fraction=0.5)
    rng = random.Random(3)
    seen = set()
    for _ in range(40):
        model, columns = mix.next_inputs(corpus, pairs, rng)
        seen.add(model)
        if model == "qa":
            assert set(columns) == {contract.QUESTION, contract.CONTEXT}
            assert len(columns[contract.QUESTION]) == len(columns[contract.CONTEXT]) in (1, 4)
            assert all(any(p.question == q and p.context == c for p in pairs)
                       for q, c in zip(columns[contract.QUESTION], columns[contract.CONTEXT]))
        else:
            assert set(columns) == {contract.TEXT} and len(columns[contract.TEXT]) in (1, 4)
    assert seen == {"qa", "ner"}
