"""Locust users that call the trtserve ensembles through tritonclient, over gRPC or HTTP.

    locust -f loadtest/locustfile.py --host 127.0.0.1:8001 GrpcTritonUser
    locust -f loadtest/locustfile.py --host 127.0.0.1:8000 HttpTritonUser

``--host`` is Triton's ``host:port`` for the chosen protocol (no scheme). Each user is a
closed-loop client with its own connection: it sends one request (a single text, or a
client-side batch of ``--trt-batch-size`` texts with probability ``--trt-batch-fraction``) to
one of ``--trt-models``, waits for the answer, and fires a Locust request event with the real
response time, the response size (bytes of the returned tensors) and the failure typed by
:mod:`trtserve_client.errors` (e.g. ``ServerOverloadedError``). ``make loadtest`` (loadtest/
run.py) is the usual front door; it runs this file headless and adds the server-side report.

gevent: Locust monkey-patches the process for gevent when it is imported. gRPC's C core
does not cooperate with that by itself: without ``init_gevent()`` every gRPC call blocks the
whole process and all users silently take turns (seen on 2 cores: 144 req/s instead of 506,
with misleadingly low latency). So it is called right after importing locust and before any
channel exists. tritonclient.http is built on geventhttpclient and needs nothing.
"""
from __future__ import annotations

import csv
import random
import sys
import time
from pathlib import Path

import locust  # noqa: F401  (first: gevent monkey-patching)
from grpc.experimental import gevent as grpc_gevent

grpc_gevent.init_gevent()

from locust import User, events, task  # noqa: E402

from loadtest import exit_watchdog  # noqa: E402
from loadtest.qa_ner_workload import cloze_pairs  # noqa: E402
from loadtest.workload import DEFAULT_MODELS, RequestMix, load_corpus, request_name  # noqa: E402
from trtserve_client.errors import translate_error  # noqa: E402
from trtserve_client.inputs import encode_texts, text_tensor  # noqa: E402

_BYTES = "BYTES"
exit_watchdog.install(events)  # a finished run exits even if gRPC under gevent hangs it


@events.init_command_line_parser.add_listener
def add_arguments(parser) -> None:
    """trtserve options; each can also come from the environment (for docker compose)."""
    group = parser.add_argument_group("trtserve")
    group.add_argument("--trt-models", default=",".join(DEFAULT_MODELS), env_var="TRTSERVE_MODELS",
                       help="comma-separated ensembles to call, picked uniformly per request")
    group.add_argument("--trt-batch-size", type=int, default=8, env_var="TRTSERVE_BATCH_SIZE",
                       help="texts per client-side batch request")
    group.add_argument("--trt-batch-fraction", type=float, default=0.2, env_var="TRTSERVE_BATCH_FRACTION",
                       help="share of requests that are batches (the rest carry one text)")
    group.add_argument("--trt-corpus", default="", env_var="TRTSERVE_CORPUS",
                       help="text file, one text per line (default: loadtest/data/review_snippets.txt)")
    group.add_argument("--trt-timeout", type=float, default=30.0, env_var="TRTSERVE_TIMEOUT",
                       help="client timeout per request, seconds")
    group.add_argument("--trt-wait", type=float, default=0.0, env_var="TRTSERVE_WAIT",
                       help="think time between a user's requests, seconds (0: closed loop)")
    # Read by loadtest/shape_step.py (the step shape) when that file is loaded too.
    group.add_argument("--step-users", type=int, default=4, env_var="TRTSERVE_STEP_USERS",
                       help="step shape: users added per step (and the first step's users)")
    group.add_argument("--step-time", type=float, default=20.0, env_var="TRTSERVE_STEP_TIME",
                       help="step shape: seconds per step")
    group.add_argument("--step-max-users", type=int, default=64, env_var="TRTSERVE_STEP_MAX_USERS",
                       help="step shape: stop after the step that reaches this many users")


@events.test_stop.add_listener
def write_final_csv(environment, **_kwargs) -> None:
    """Rewrite ``--csv``'s totals once every user has finished its last request.

    Locust's own CSV writer stops a moment before the users do (``--stop-timeout`` lets them
    finish their request), so its last ``_stats.csv`` misses the requests still in flight;
    the server-side counters would then disagree with the client's. ``test_stop`` fires after
    the users have stopped, on the process that holds the totals (never on a worker).
    """
    from locust.runners import WorkerRunner
    from locust.stats import PERCENTILES_TO_REPORT, StatsCSV

    prefix = getattr(environment.parsed_options, "csv_prefix", None)
    if not prefix or isinstance(environment.runner, WorkerRunner):
        return
    writer = StatsCSV(environment, PERCENTILES_TO_REPORT)
    for suffix, write in (("_stats.csv", writer.requests_csv), ("_failures.csv", writer.failures_csv)):
        with open(f"{prefix}{suffix}", "w", newline="", encoding="utf-8") as f:
            write(csv.writer(f))


_corpus_cache: dict[str, list[str]] = {}
_pairs_cache: dict[str, list] = {}
#: Cloze (question, context) pairs per corpus for the QA models (loadtest/qa_ner_workload.py).
QA_PAIRS = 500


def corpus_for(path: str) -> list[str]:
    """The corpus, read once per process (all users share it)."""
    if path not in _corpus_cache:
        _corpus_cache[path] = load_corpus(path or None)
    return _corpus_cache[path]


def qa_pairs_for(path: str) -> list:
    """Question/context pairs made from the corpus, once per process."""
    if path not in _pairs_cache:
        _pairs_cache[path] = cloze_pairs(corpus_for(path), QA_PAIRS)
    return _pairs_cache[path]


def _payload_bytes(arrays) -> int:
    total = 0
    for array in arrays:
        if array is None:
            continue
        if array.dtype == object:
            total += sum(len(x) if isinstance(x, (bytes, str)) else 0 for x in array.ravel())
        else:
            total += array.nbytes
    return total


class TritonUser(User):
    """One closed-loop client; subclasses provide the tritonclient module and the call."""

    abstract = True
    protocol = ""

    def wait_time(self) -> float:  # Locust's hook: seconds between this user's requests
        return self.environment.parsed_options.trt_wait

    def on_start(self) -> None:
        self.options = self.environment.parsed_options
        self.mix = RequestMix(
            models=RequestMix.parse_models(self.options.trt_models),
            batch_size=self.options.trt_batch_size,
            batch_fraction=self.options.trt_batch_fraction,
        )
        self.corpus = corpus_for(self.options.trt_corpus)
        self.qa_pairs = qa_pairs_for(self.options.trt_corpus)
        self.rng = random.Random()
        self.client = self.connect(self.host, self.options.trt_timeout)

    def on_stop(self) -> None:
        client = getattr(self, "client", None)
        if client is not None:
            client.close()

    @task
    def infer(self) -> None:
        model, columns = self.mix.next_inputs(self.corpus, self.qa_pairs, self.rng)
        tensors = {name: text_tensor(encode_texts(values)) for name, values in columns.items()}
        texts = next(iter(columns.values()))
        start = time.perf_counter()
        exception: BaseException | None = None
        length = 0
        try:
            outputs = self.call(model, tensors)
            length = _payload_bytes(outputs)
            rows = {a.shape[0] for a in outputs if a is not None}
            if rows != {len(texts)}:
                raise AssertionError(f"expected {len(texts)} row(s) in every output, got shapes "
                                     f"{[None if a is None else a.shape for a in outputs]}")
        except AssertionError as e:  # an answer that does not fit the request
            exception = e
        except Exception as e:  # noqa: BLE001 - every failure is a failed request, typed
            exception = translate_error(e)  # ServerOverloadedError, RequestTimeoutError, ...
        elapsed_ms = (time.perf_counter() - start) * 1000.0
        self.environment.events.request.fire(
            request_type=self.protocol,
            name=request_name(model, len(texts)),
            response_time=elapsed_ms,
            response_length=length,
            exception=exception,
            context={"model": model, "texts": len(texts)},
        )

    # -- per protocol ---------------------------------------------------------------------
    def connect(self, url: str, timeout_s: float):
        raise NotImplementedError

    def call(self, model: str, tensors):
        """Send ``tensors`` ({input name: BYTES [n, 1]}); return the output arrays."""
        raise NotImplementedError

    def inputs(self, tensors, **binary):
        out = []
        for name, tensor in tensors.items():
            item = self.tc.InferInput(name, list(tensor.shape), _BYTES)
            item.set_data_from_numpy(tensor, **binary)
            out.append(item)
        return out


class GrpcTritonUser(TritonUser):
    """tritonclient.grpc, one channel per user; ``client_timeout`` is the call deadline."""

    protocol = "grpc"

    def connect(self, url, timeout_s):
        import tritonclient.grpc as grpcclient

        self.tc = grpcclient
        self.timeout_s = timeout_s
        return grpcclient.InferenceServerClient(url)

    def call(self, model, tensors):
        result = self.client.infer(model, self.inputs(tensors), client_timeout=self.timeout_s)
        return [result.as_numpy(o.name) for o in result.get_response().outputs]


class HttpTritonUser(TritonUser):
    """tritonclient.http (geventhttpclient), one connection per user, binary tensors."""

    protocol = "http"

    def connect(self, url, timeout_s):
        import tritonclient.http as httpclient

        self.tc = httpclient
        return httpclient.InferenceServerClient(url, connection_timeout=timeout_s, network_timeout=timeout_s)

    def call(self, model, tensors):
        result = self.client.infer(model, self.inputs(tensors, binary_data=True))
        return [result.as_numpy(o["name"]) for o in result.get_response()["outputs"]]
