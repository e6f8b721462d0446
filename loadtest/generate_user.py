"""Locust users that stream from ``generate``: time to first token and tokens/s.

    locust -f loadtest/generate_user.py --headless -u 8 -r 8 -t 30s --host 127.0.0.1:8001 \
        --gen-report results/loadtest/generate.json

Each user is a closed-loop client with its own connection (``TrtServeClient.generate``, gRPC
stream by default, ``--gen-protocol http`` for ``generate_stream``); it streams one prompt
from the corpus, and fires two Locust request events per stream: ``generate: first piece``
(time to the first piece) and ``generate: stream`` (the whole stream; response_length = the
tokens generated). At the end the report gives TTFT p50/p95, inter-piece gaps p50/p95 and the
generated tokens/s over the run (all users together), printed and written to ``--gen-report``.
"""
from __future__ import annotations

import json
import random
import sys
import time
from pathlib import Path

import locust  # noqa: F401  (first: gevent monkey-patching)
from grpc.experimental import gevent as grpc_gevent

grpc_gevent.init_gevent()

import numpy as np  # noqa: E402
from locust import User, events, task  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from loadtest import exit_watchdog  # noqa: E402
from loadtest.workload import load_corpus  # noqa: E402
from trtserve_client import TrtServeClient  # noqa: E402
from trtserve_client.errors import translate_error  # noqa: E402


class StreamTotals:
    """What every user's streams add up to (one process holds them all)."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.ttft_ms: list[float] = []
        self.gaps_ms: list[float] = []
        self.tokens = 0
        self.streams = 0
        self.failures = 0

    def report(self) -> dict:
        elapsed = time.monotonic() - self.started

        def pct(values, q):
            return round(float(np.percentile(values, q)), 2) if values else None

        return {
            "streams": self.streams, "failures": self.failures, "tokens": self.tokens, "seconds": round(elapsed, 2),
            "tokens_per_s": round(self.tokens / elapsed, 1) if elapsed > 0 else 0.0,
            "ttft_ms_p50": pct(self.ttft_ms, 50), "ttft_ms_p95": pct(self.ttft_ms, 95),
            "inter_piece_ms_p50": pct(self.gaps_ms, 50), "inter_piece_ms_p95": pct(self.gaps_ms, 95),
        }


TOTALS = StreamTotals()
exit_watchdog.install(events)  # a finished run exits even if gRPC under gevent hangs it


@events.init_command_line_parser.add_listener
def add_arguments(parser) -> None:
    group = parser.add_argument_group("trtserve generate")
    group.add_argument("--gen-model", default="generate", env_var="TRTSERVE_GEN_MODEL")
    group.add_argument("--gen-protocol", default="grpc", choices=["grpc", "http"], env_var="TRTSERVE_GEN_PROTOCOL")
    group.add_argument("--gen-max-new-tokens", type=int, default=32, env_var="TRTSERVE_GEN_MAX_NEW_TOKENS")
    group.add_argument("--gen-corpus", default="", env_var="TRTSERVE_GEN_CORPUS",
                       help="prompts, one per line (default: loadtest/data/review_snippets.txt)")
    group.add_argument("--gen-timeout", type=float, default=60.0, env_var="TRTSERVE_GEN_TIMEOUT")
    group.add_argument("--gen-report", default="", env_var="TRTSERVE_GEN_REPORT", help="write the summary JSON here")


@events.test_start.add_listener
def reset_totals(**_kwargs) -> None:
    global TOTALS
    TOTALS = StreamTotals()


@events.test_stop.add_listener
def write_report(environment, **_kwargs) -> None:
    report = TOTALS.report()
    print("generate: " + json.dumps(report), flush=True)
    path = getattr(environment.parsed_options, "gen_report", "")
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(report, indent=2) + "\n")


class GenerateUser(User):
    def wait_time(self) -> float:
        return 0.0

    def on_start(self) -> None:
        self.options = self.environment.parsed_options
        self.corpus = load_corpus(self.options.gen_corpus or None)
        self.rng = random.Random()
        self.client = TrtServeClient(self.host, protocol=self.options.gen_protocol, timeout_s=self.options.gen_timeout)

    def on_stop(self) -> None:
        self.client.close()

    @task
    def stream(self) -> None:
        fire = self.environment.events.request.fire
        start = time.perf_counter()
        last = start
        first_ms = None
        gaps = []
        try:
            stream = self.client.generate(self.rng.choice(self.corpus), max_new_tokens=self.options.gen_max_new_tokens,
                                          model=self.options.gen_model)
            for _piece in stream:
                now = time.perf_counter()
                if first_ms is None:
                    first_ms = (now - start) * 1000.0
                    fire(request_type=self.options.gen_protocol, name="generate: first piece",
                         response_time=first_ms, response_length=0, exception=None)
                else:
                    gaps.append((now - last) * 1000.0)
                last = now
        except Exception as e:  # noqa: BLE001 - a failed stream is a failed request, typed
            TOTALS.failures += 1
            fire(request_type=self.options.gen_protocol, name="generate: stream",
                 response_time=(time.perf_counter() - start) * 1000.0, response_length=0, exception=translate_error(e))
            return
        TOTALS.streams += 1
        TOTALS.tokens += stream.tokens or 0
        TOTALS.gaps_ms.extend(gaps)
        if first_ms is not None:
            TOTALS.ttft_ms.append(first_ms)
        fire(request_type=self.options.gen_protocol, name="generate: stream",
             response_time=(time.perf_counter() - start) * 1000.0, response_length=stream.tokens or 0, exception=None)
