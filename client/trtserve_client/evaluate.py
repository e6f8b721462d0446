"""Evaluate a served ``qa`` or ``ner`` deployment on a file in the official format.

    python -m trtserve_client.evaluate qa --squad dev-v1.1.json [--url HOST:PORT --protocol grpc]
    python -m trtserve_client.evaluate ner --conll eng.testb [--url HOST:PORT --protocol grpc]

(``make eval-qa SQUAD=...`` / ``make eval-ner CONLL=...`` against ``make serve``.) Whatever
the server serves (any variant, any precision) is what is measured. SQuAD v1.1 or v2.0 JSON;
CoNLL: one token per line with its NER tag in the last column, blank lines between sentences,
``-DOCSTART-`` lines ignored. Each sentence is sent as its tokens joined by spaces, and the
returned entities are turned back into one IOB2 tag per token.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from .client import DEFAULT_NER_MODEL, DEFAULT_QA_MODEL, TrtServeClient
from .metrics import entity_scores, squad_scores
from .results import Entity


class EvaluationFileError(ValueError):
    """The evaluation file is not in the expected format; the message says where."""


def read_squad(path: str | Path) -> tuple[str, list[dict]]:
    """(version, [{"id", "question", "context", "answers": [texts]}]) from a SQuAD JSON file."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        questions = [{"id": qa["id"], "question": qa["question"], "context": paragraph["context"],
                      "answers": [] if qa.get("is_impossible") else [a["text"] for a in qa["answers"]]}
                     for article in data["data"] for paragraph in article["paragraphs"] for qa in paragraph["qas"]]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise EvaluationFileError(f"{path}: not a SQuAD v1.1/v2.0 file: {e!r}") from e
    if not questions:
        raise EvaluationFileError(f"{path}: no questions")
    return str(data.get("version", "")), questions


def read_conll(path: str | Path) -> list[tuple[list[str], list[str]]]:
    """(tokens, tags) per sentence of a CoNLL-2003-style file."""
    sentences, tokens, tags = [], [], []
    for lineno, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        fields = line.split()
        if not fields or fields[0] == "-DOCSTART-":
            if tokens:
                sentences.append((tokens, tags))
                tokens, tags = [], []
            continue
        if len(fields) < 2:
            raise EvaluationFileError(f"{path}:{lineno}: expected 'token ... tag', got {line!r}")
        tokens.append(fields[0])
        tags.append(fields[-1])
    if tokens:
        sentences.append((tokens, tags))
    if not sentences:
        raise EvaluationFileError(f"{path}: no sentences")
    return sentences


def tags_from_entities(tokens: Sequence[str], entities: Sequence[Entity]) -> list[str]:
    """One IOB2 tag per token of ``" ".join(tokens)`` from the served entities.

    Grouped entities (``entity_group``): B-/I-<type> on the tokens whose first character they
    cover. Token-level entities (aggregation ``none``): each token takes the label of the entity
    on its first character, as it is.
    """
    tags, start, previous = [], 0, None
    for token in tokens:
        hit = next((e for e in entities if e.start <= start < e.end), None)
        if hit is None:
            tags.append("O")
        elif hit.index is not None:
            tags.append(hit.label)
        else:
            kind = hit.label.split("-", 1)[-1] if hit.label[:2] in ("B-", "I-") else hit.label
            tags.append(("I-" if hit is previous else "B-") + kind)
        previous = hit
        start += len(token) + 1
    return tags


def evaluate_qa(client: TrtServeClient, path: str | Path, model: str = DEFAULT_QA_MODEL) -> dict:
    version, questions = read_squad(path)
    answers = client.answers([(q["question"], q["context"]) for q in questions], model=model)
    predictions = {q["id"]: a.text for q, a in zip(questions, answers)}
    report = squad_scores(predictions, {q["id"]: q["answers"] for q in questions})
    return {"file": str(path), "version": version, "model": model, **report}


def evaluate_ner(client: TrtServeClient, path: str | Path, model: str = DEFAULT_NER_MODEL) -> dict:
    sentences = read_conll(path)
    results = client.entities([" ".join(tokens) for tokens, _ in sentences], model=model)
    predicted = [tags_from_entities(tokens, entities) for (tokens, _), entities in zip(sentences, results)]
    report = entity_scores([tags for _, tags in sentences], predicted)
    return {"file": str(path), "model": model, "sentences": len(sentences), **report}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trtserve_client.evaluate", description=__doc__.split("\n")[0])
    parser.add_argument("task", choices=("qa", "ner"))
    parser.add_argument("--squad", help="SQuAD v1.1 / v2.0 JSON (qa)")
    parser.add_argument("--conll", help="CoNLL-2003-style file (ner)")
    parser.add_argument("--model", default=None)
    parser.add_argument("--url", default=None, help="host:port (default: the protocol's port on 127.0.0.1)")
    parser.add_argument("--protocol", choices=("grpc", "http"), default="grpc")
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--output", help="also write the report as JSON here")
    args = parser.parse_args(argv)
    path = args.squad if args.task == "qa" else args.conll
    if not path:
        parser.error(f"{args.task} needs --{'squad' if args.task == 'qa' else 'conll'} FILE")
    with TrtServeClient(args.url, protocol=args.protocol, timeout_s=args.timeout) as client:
        if args.task == "qa":
            report = evaluate_qa(client, path, args.model or DEFAULT_QA_MODEL)
            print(f"{report['model']} on {path} (SQuAD {report['version']}, {report['total']} questions): "
                  f"EM {report['exact']:.2f}  F1 {report['f1']:.2f}")
        else:
            report = evaluate_ner(client, path, args.model or DEFAULT_NER_MODEL)
            print(f"{report['model']} on {path} ({report['sentences']} sentences, {report['true_entities']} entities): "
                  f"precision {100 * report['precision']:.2f}  recall {100 * report['recall']:.2f}  "
                  f"F1 {100 * report['f1']:.2f}")
    if args.output:
        Path(args.output).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
