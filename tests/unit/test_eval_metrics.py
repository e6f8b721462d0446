"""SQuAD EM/F1 and seqeval entity F1 on small hand-written files in the official formats."""
from __future__ import annotations

from pathlib import Path

import pytest

from trtserve_client.evaluate import EvaluationFileError, read_conll, read_squad, tags_from_entities
from trtserve_client.metrics import entity_scores, f1, get_entities, normalize_answer, squad_scores
from trtserve_client.results import Entity

DATA = Path(__file__).resolve().parents[1] / "data"


def test_normalization_is_the_official_one():
    assert normalize_answer("The  Denver Broncos.") == "denver broncos"
    assert normalize_answer("Levi's Stadium, an arena") == "levis stadium arena"


def test_squad_v11_scores_by_hand():
    version, questions = read_squad(DATA / "squad-v1.1-sample.json")
    assert version == "1.1" and len(questions) == 3
    golds = {q["id"]: q["answers"] for q in questions}
    predictions = {"56be4db0acb8001400a502ec": "the Denver Broncos.",  # EM after normalization
                   "56be4db0acb8001400a502ee": "Levi's Stadium in Santa Clara"}  # best F1 4/7; q-seats: none
    report = squad_scores(predictions, golds)
    assert report["exact"] == pytest.approx(100 / 3)
    assert report["f1"] == pytest.approx(100 * (1 + 4 / 7 + 0) / 3)
    assert report["total"] == 3 and "HasAns_exact" not in report
    assert f1("Levi's Stadium in Santa Clara", "Santa Clara, California") == pytest.approx(0.5)


def test_squad_v20_scores_unanswerable_questions_by_hand():
    version, questions = read_squad(DATA / "squad-v2.0-sample.json")
    assert version == "v2.0" and [q["answers"] for q in questions][1:3] == [[], []]
    predictions = {"n1": "the Normans", "n2": "", "n3": "France", "n4": "11th centuries"}
    report = squad_scores(predictions, {q["id"]: q["answers"] for q in questions})
    assert report["exact"] == pytest.approx(50.0)
    assert report["f1"] == pytest.approx(100 * (1 + 1 + 0 + 2 / 3) / 4)
    assert (report["HasAns_exact"], report["NoAns_exact"]) == (pytest.approx(50.0), pytest.approx(50.0))
    assert report["HasAns_f1"] == pytest.approx(100 * (1 + 2 / 3) / 2) and report["NoAns_total"] == 2


def test_seqeval_chunks_accept_iob1_and_iob2():
    assert get_entities(["B-PER", "I-PER", "O", "I-LOC", "B-LOC", "I-ORG"]) == [
        ("PER", 0, 1), ("LOC", 3, 3), ("LOC", 4, 4), ("ORG", 5, 5)]
    assert get_entities([["I-ORG"], ["I-ORG", "I-ORG"]]) == [("ORG", 0, 0), ("ORG", 2, 3)]


def test_conll_entity_f1_by_hand():
    sentences = read_conll(DATA / "conll-sample.txt")
    assert [len(t) for t, _ in sentences] == [9, 2, 2] and sentences[1] == (["Peter", "Blackburn"], ["I-PER", "I-PER"])
    predicted = [["B-ORG", "O", "B-MISC", "O", "O", "O", "O", "O", "O"],  # British missed
                 ["B-PER", "I-PER"],
                 ["B-PER", "O"]]  # BRUSSELS with the wrong type
    report = entity_scores([tags for _, tags in sentences], predicted)
    assert (report["true_entities"], report["predicted_entities"], report["correct"]) == (5, 4, 3)
    assert report["precision"] == pytest.approx(0.75) and report["recall"] == pytest.approx(0.6)
    assert report["f1"] == pytest.approx(2 / 3)


def test_served_entities_become_one_tag_per_token():
    tokens = ["Peter", "Blackburn", "visited", "Brussels"]
    grouped = [Entity("PER", 0.9, "peter blackburn", 0, 15), Entity("LOC", 0.8, "brussels", 24, 32)]
    assert tags_from_entities(tokens, grouped) == ["B-PER", "I-PER", "O", "B-LOC"]
    per_token = [Entity("B-PER", 0.9, "peter", 0, 5, index=1), Entity("I-PER", 0.9, "black", 6, 11, index=2),
                 Entity("I-PER", 0.9, "##burn", 11, 15, index=3)]
    assert tags_from_entities(tokens, per_token) == ["B-PER", "I-PER", "O", "O"]


def test_malformed_files_are_named(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"data": [{"paragraphs": [{"qas": []}]}]}')
    with pytest.raises(EvaluationFileError, match="bad.json"):
        read_squad(bad)
    conll = tmp_path / "bad.conll"
    conll.write_text("EU\n")
    with pytest.raises(EvaluationFileError, match="bad.conll:1"):
        read_conll(conll)
