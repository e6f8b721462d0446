"""`trtserve`: classify, embed, answer questions, find entities, or check a server is ready.

    trtserve classify "a gripping, beautifully acted film" "a dull mess"
    trtserve embed --json "some text"
    trtserve qa --context review.txt "who directed the film?"
    trtserve ner "Tom Hanks flew to Paris."
    echo "one text per line" | trtserve classify
    trtserve ready --wait 120

Texts come from the arguments, or from stdin (one per line, blank lines skipped) when none
are given or one is ``-``. Errors print one line, ``trtserve: <ErrorClass>: <message>``, to
stderr; the exit code says what kind of error it was (see ``EXIT_CODES``).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Mapping, Sequence
from typing import TextIO

from ._transport import DEFAULT_URLS, PROTOCOLS
from .client import DEFAULT_CLASSIFY_MODEL, DEFAULT_EMBED_MODEL, DEFAULT_NER_MODEL, DEFAULT_QA_MODEL, TrtServeClient
from .errors import (
    BadInputError,
    RequestTimeoutError,
    ServerOverloadedError,
    ServerUnavailableError,
    TrtServeError,
)

__all__ = ["main", "build_parser", "exit_code_for", "resolve_texts", "resolve_url", "EXIT_CODES"]

EXIT_OK = 0
EXIT_ERROR = 1  # anything else: model not found/not ready, server-side inference error
EXIT_BAD_INPUT = 2  # also argparse's usage errors
EXIT_UNAVAILABLE = 3  # cannot reach the server, timed out, or overloaded: try again later
EXIT_INTERRUPTED = 130

# Checked in order; the first matching class wins.
EXIT_CODES: tuple[tuple[type[TrtServeError], int], ...] = (
    (BadInputError, EXIT_BAD_INPUT),
    (ServerUnavailableError, EXIT_UNAVAILABLE),
    (RequestTimeoutError, EXIT_UNAVAILABLE),
    (ServerOverloadedError, EXIT_UNAVAILABLE),
    (TrtServeError, EXIT_ERROR),
)

URL_ENV = "TRTSERVE_URL"
STDIN_MARKER = "-"
_EMBEDDING_VALUES_SHOWN = 5


def exit_code_for(error: TrtServeError) -> int:
    """The process exit code for a client error (the table is ``EXIT_CODES``)."""
    for error_class, code in EXIT_CODES:
        if isinstance(error, error_class):
            return code
    return EXIT_ERROR


def _seconds(*, allow_zero: bool):
    """An argparse type for a number of seconds: > 0, or >= 0 with ``allow_zero``."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not (value >= 0 if allow_zero else value > 0):
            raise argparse.ArgumentTypeError(f"must be {'>=' if allow_zero else '>'} 0, got {text}")
        return value

    return parse


def _add_connection_options(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    """Options valid both before and after the subcommand. On subparsers the defaults are
    suppressed so that a value given before the subcommand is not overwritten."""

    def default(value: object) -> object:
        return argparse.SUPPRESS if suppress else value

    parser.add_argument(
        "--url", default=default(None),
        help=f"host:port (default: ${URL_ENV}, else {DEFAULT_URLS['grpc']} for grpc, "
        f"{DEFAULT_URLS['http']} for http)",
    )
    parser.add_argument("--protocol", choices=PROTOCOLS, default=default("grpc"),
                        help="default: grpc")
    parser.add_argument("--timeout", type=_seconds(allow_zero=False), default=default(10.0), metavar="SECONDS",
                        help="per-request timeout (default: 10)")
    parser.add_argument("--json", action="store_true", default=default(False),
                        help="print JSON instead of text")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trtserve", description="Client for the trtserve Triton ensembles."
    )
    _add_connection_options(parser, suppress=False)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    classify = commands.add_parser("classify", help="classify texts (sentiment)")
    _add_connection_options(classify, suppress=True)
    classify.add_argument("texts", nargs="*", metavar="TEXT", help="texts; '-' or none: stdin")
    classify.add_argument("--model", default=DEFAULT_CLASSIFY_MODEL,
                          help=f"default: {DEFAULT_CLASSIFY_MODEL}")
    classify.add_argument("--labels", default=None, metavar="A,B,...",
                          help="class names in PROBABILITIES order (default: negative,positive)")
    classify.set_defaults(handler=_run_classify)

    embed = commands.add_parser("embed", help="embed texts")
    _add_connection_options(embed, suppress=True)
    embed.add_argument("texts", nargs="*", metavar="TEXT", help="texts; '-' or none: stdin")
    embed.add_argument("--model", default=DEFAULT_EMBED_MODEL, help=f"default: {DEFAULT_EMBED_MODEL}")
    embed.set_defaults(handler=_run_embed)

    qa = commands.add_parser("qa", help="answer questions about a context (question answering)")
    _add_connection_options(qa, suppress=True)
    qa.add_argument("questions", nargs="*", metavar="QUESTION", help="questions; '-' or none: stdin")
    qa.add_argument("--context", required=True, metavar="FILE", help="UTF-8 text file with the context")
    qa.add_argument("--model", default=DEFAULT_QA_MODEL, help=f"default: {DEFAULT_QA_MODEL}")
    qa.set_defaults(handler=_run_qa)

    ner = commands.add_parser("ner", help="find entities in texts (token classification)")
    _add_connection_options(ner, suppress=True)
    ner.add_argument("texts", nargs="*", metavar="TEXT", help="texts; '-' or none: stdin")
    ner.add_argument("--model", default=DEFAULT_NER_MODEL, help=f"default: {DEFAULT_NER_MODEL}")
    ner.set_defaults(handler=_run_ner)

    ready = commands.add_parser(
        "ready", help="check that models answer a real inference (exit 0 when they do)"
    )
    _add_connection_options(ready, suppress=True)
    ready.add_argument("--model", action="append", default=None, dest="models", metavar="MODEL",
                       help=f"repeatable (default: {DEFAULT_CLASSIFY_MODEL} and {DEFAULT_EMBED_MODEL})")
    ready.add_argument("--wait", type=_seconds(allow_zero=True), default=0.0, metavar="SECONDS",
                       help="keep trying this long (default: 0, try once)")
    ready.set_defaults(handler=_run_ready)
    return parser


def resolve_url(url: str | None, protocol: str, environ: Mapping[str, str]) -> str:
    """``--url``, else ``$TRTSERVE_URL``, else the protocol's default port on 127.0.0.1."""
    return url or environ.get(URL_ENV) or DEFAULT_URLS[protocol]


def resolve_texts(arguments: Sequence[str], stdin: TextIO) -> list[str]:
    """The arguments, with ``-`` (or no arguments at all) replaced by stdin's non-blank lines."""
    if not arguments:
        arguments = [STDIN_MARKER]
    texts: list[str] = []
    stdin_lines: list[str] | None = None
    for argument in arguments:
        if argument != STDIN_MARKER:
            texts.append(argument)
            continue
        if stdin_lines is None:
            try:
                stdin_lines = [line.rstrip("\r\n") for line in stdin]
            except UnicodeDecodeError as e:
                raise BadInputError(f"stdin is not valid UTF-8: {e}") from e
            stdin_lines = [line for line in stdin_lines if line.strip()]
        texts.extend(stdin_lines)
        stdin_lines = []  # stdin is read once; a second '-' adds nothing
    return texts


def _print_json(value: object, out: TextIO) -> None:
    print(json.dumps(value, ensure_ascii=False), file=out)


def _run_classify(client: TrtServeClient, args: argparse.Namespace, texts: list[str], out: TextIO) -> int:
    labels = [name.strip() for name in args.labels.split(",")] if args.labels else None
    results = client.classify(texts, model=args.model, labels=labels)
    if args.json:
        _print_json(
            [
                {"text": text, "label": r.label, "score": r.score, "probabilities": r.probabilities}
                for text, r in zip(texts, results)
            ],
            out,
        )
    else:
        for text, r in zip(texts, results):
            print(f"{r.label}\t{r.score:.4f}\t{text}", file=out)
    return EXIT_OK


def _run_embed(client: TrtServeClient, args: argparse.Namespace, texts: list[str], out: TextIO) -> int:
    vectors = client.embed(texts, model=args.model)
    if args.json:
        _print_json([{"text": t, "embedding": v.tolist()} for t, v in zip(texts, vectors)], out)
    else:
        for text, vector in zip(texts, vectors):
            head = " ".join(f"{x:+.4f}" for x in vector[:_EMBEDDING_VALUES_SHOWN])
            more = " ..." if vector.shape[0] > _EMBEDDING_VALUES_SHOWN else ""
            print(f"dim={vector.shape[0]}\t[{head}{more}]\t{text}", file=out)
    return EXIT_OK


def read_context(path: str) -> str:
    """The ``--context`` file's text; a clear BadInputError when it cannot be read."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise BadInputError(f"cannot read --context {path}: {e}") from e


def _run_qa(client: TrtServeClient, args: argparse.Namespace, questions: list[str], out: TextIO) -> int:
    context = read_context(args.context)
    answers = client.answers([(q, context) for q in questions], model=args.model)
    if args.json:
        _print_json([{"question": q, "answer": a.text, "score": a.score, "start": a.start, "end": a.end}
                     for q, a in zip(questions, answers)], out)
    else:
        for q, a in zip(questions, answers):
            shown = a.text if a.found else "(no answer)"
            print(f"{shown}\t{a.score:.4f}\t{a.start}:{a.end}\t{q}", file=out)
    return EXIT_OK


def _run_ner(client: TrtServeClient, args: argparse.Namespace, texts: list[str], out: TextIO) -> int:
    results = client.entities(texts, model=args.model)
    if args.json:
        _print_json([{"text": t, "entities": [dataclasses.asdict(e) for e in entities]} for t, entities in zip(texts, results)], out)
    else:
        for text, entities in zip(texts, results):
            found = "; ".join(f"{e.label} {text[e.start:e.end]!r} {e.score:.3f}" for e in entities) or "(none)"
            print(f"{found}\t{text}", file=out)
    return EXIT_OK


def _run_ready(client: TrtServeClient, args: argparse.Namespace, texts: list[str], out: TextIO) -> int:
    models = args.models or [DEFAULT_CLASSIFY_MODEL, DEFAULT_EMBED_MODEL]
    waited_s = client.wait_ready(models, timeout_s=args.wait)
    if args.json:
        _print_json({"ready": True, "models": models, "url": client.url,
                     "protocol": client.protocol, "waited_s": round(waited_s, 3)}, out)
    else:
        print(f"ready: {', '.join(models)} at {client.url} ({client.protocol}), "
              f"after {waited_s:.1f}s", file=out)
    return EXIT_OK


def _report(error_name: str, message: object) -> None:
    print(f"trtserve: {error_name}: {' '.join(str(message).split())}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``trtserve`` console script; returns the exit code (never exits)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, or a usage error argparse has already printed
        return e.code if isinstance(e.code, int) else (EXIT_OK if e.code is None else EXIT_BAD_INPUT)

    url = resolve_url(args.url, args.protocol, os.environ)
    try:
        if args.command in ("classify", "embed", "ner"):
            texts = resolve_texts(args.texts, sys.stdin)
        elif args.command == "qa":
            texts = resolve_texts(args.questions, sys.stdin)
        else:
            texts = []
        try:
            client = TrtServeClient(url=url, protocol=args.protocol, timeout_s=args.timeout)
        except ValueError as e:
            _report("ValueError", e)
            return EXIT_BAD_INPUT
        with client:
            return args.handler(client, args, texts, sys.stdout)
    except TrtServeError as e:
        _report(type(e).__name__, e)
        return exit_code_for(e)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
