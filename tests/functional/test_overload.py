"""Overload and bad clients against a real server whose queues are tiny, so that they fill.

The server here serves the shipped specs with ``max_queue_size = 2`` (queue timeout 200 ms),
generated through the production path (spec -> protobuf config). Every test ends by checking
the server still answers a real inference correctly and promptly.
"""
from __future__ import annotations

import dataclasses
import json
import socket
import struct
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from trtserve_client import (
    RetryPolicy,
    ServerOverloadedError,
    TrtServeClient,
    TrtServeError,
    is_retryable,
)

TINY_QUEUE = 2
QUEUE_TIMEOUT_US = 200_000
POSITIVE = "a gripping, beautifully acted film"


@pytest.fixture(scope="module")
def tiny_repository(tmp_path_factory, sentiment_spec, embed_spec):
    from trtserve_build.pipeline.build import build_variant

    def tiny(spec):
        return dataclasses.replace(spec, batching=dataclasses.replace(
            spec.batching, max_queue_size=TINY_QUEUE, queue_timeout_microseconds=QUEUE_TIMEOUT_US))

    return build_variant([tiny(sentiment_spec), tiny(embed_spec)], "cpu", tmp_path_factory.mktemp("tiny_queue") / "cpu")


@pytest.fixture(scope="module")
def tiny_queue_server(tiny_repository):
    from trtserve_server.embedded import EmbeddedServer, Ports

    server = EmbeddedServer(tiny_repository, Ports.free(), log_path=tiny_repository.parent / "triton.log")
    server.start()
    try:
        server.wait_ready(timeout_s=180)
        yield server
    finally:
        server.stop()


def metrics(server) -> dict:
    from loadtest import triton_metrics

    return triton_metrics.scrape(f"http://{server.host}:{server.ports.metrics}/metrics")


def assert_healthy(server, within_s: float = 10.0) -> None:
    """A real inference answers correctly, and nothing is left pending in any queue."""
    from loadtest import triton_metrics

    with TrtServeClient(server.grpc_url, timeout_s=10, retry=RetryPolicy(deadline_s=within_s)) as client:
        start = time.monotonic()
        assert client.classify(POSITIVE)[0].label == "positive"
        assert client.embed("still serving").shape == (1, 384)
        assert time.monotonic() - start < within_s
    deadline = time.monotonic() + within_s
    while True:
        pending = triton_metrics.per_model(metrics(server), triton_metrics.PENDING)
        if not any(pending.values()) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert not any(pending.values()), f"requests still pending: {pending}"


# ---- overload ------------------------------------------------------------------------------


def test_overload_is_rejected_fast_and_every_accepted_request_answered(tiny_queue_server, tmp_path):
    from loadtest import overload

    out = tmp_path / "overload.json"
    code = overload.main([
        "--url", tiny_queue_server.grpc_url,
        "--metrics-url", f"http://{tiny_queue_server.host}:{tiny_queue_server.ports.metrics}/metrics",
        "--capacity", "60", "--factor", "4", "--seconds", "4", "--timeout", "20", "--output", str(out),
    ])
    result = json.loads(out.read_text())["overload"]
    assert code == 0, result
    assert result["sent"] == 960
    assert result["lost"] == 0 and result["failed"] == 0
    assert result["answered"] == result["accepted"] > 0
    assert result["rejected_queue_full"] > 0, "a 2-deep queue at 240 req/s must turn requests away"
    assert result["queue_full_rejection_p99_ms"] < 1000, "rejections at the door must be fast"
    assert result["drained_seconds"] < 4 + 10, "every request was settled soon after the load stopped"
    assert_healthy(tiny_queue_server)


def _burst(server, n_threads: int, per_thread: int, retry: RetryPolicy | None):
    errors: list[BaseException] = []
    answered = []

    def worker(i):
        with TrtServeClient(server.grpc_url, timeout_s=20, retry=retry) as client:
            for k in range(per_thread):
                try:
                    answered.append(client.classify([f"{POSITIVE} {i} {k}"] * 4)[0].label)
                except TrtServeError as e:
                    errors.append(e)

    with ThreadPoolExecutor(n_threads) as pool:
        list(pool.map(worker, range(n_threads)))
    return answered, errors


def test_rejections_are_typed_with_a_clear_message(tiny_queue_server):
    answered, errors = _burst(tiny_queue_server, n_threads=24, per_thread=3, retry=None)
    assert errors, "24 concurrent clients against a 2-deep queue must see rejections"
    assert answered, "the server must keep answering what it accepted"
    for e in errors:
        assert isinstance(e, TrtServeError) and e.retryable, repr(e)
    overloaded = [e for e in errors if isinstance(e, ServerOverloadedError)]
    assert overloaded and "Exceeds maximum queue size" in str(overloaded[0])
    assert "UNAVAILABLE" in (overloaded[0].status or "")


def test_client_retry_gets_every_request_through(tiny_queue_server):
    # The rejections are counted where the clients see them: Triton 2.51 counts a request turned
    # away by a full queue at the door in no model's REJECTED counter (one model: 65 rejections
    # seen by the clients, 4 counted, the queue timeouts), whatever the topology.
    turned_away: list[TrtServeError] = []

    def retry_if(error: TrtServeError) -> bool:
        if isinstance(error, ServerOverloadedError):
            turned_away.append(error)
        return is_retryable(error)

    # The 30 s deadline is the bound, not the attempt count: with full jitter (mean wait 0.25 s at
    # the cap) 50 attempts ran out after 12-14 s on a busy 2-core host while the deadline had 16 s left.
    policy = RetryPolicy(max_attempts=200, deadline_s=30, initial_backoff_s=0.02, max_backoff_s=0.5, retry_if=retry_if)
    answered, errors = _burst(tiny_queue_server, n_threads=24, per_thread=3, retry=policy)
    assert not errors, errors[:3]
    assert answered == ["positive"] * 72
    assert turned_away, "the burst should have been rejected at times (and retried)"


# ---- clients that go away mid-request ----------------------------------------------------


def _http_infer_body(texts) -> bytes:
    return json.dumps({"inputs": [{"name": "TEXT", "shape": [len(texts), 1], "datatype": "BYTES",
                                   "data": list(texts)}]}).encode()


def _http_request(model: str, body: bytes, content_length: int | None = None) -> bytes:
    length = len(body) if content_length is None else content_length
    return (f"POST /v2/models/{model}/infer HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n").encode() + body


def _connect(server) -> socket.socket:
    return socket.create_connection((server.host, server.ports.http), timeout=5)


def _reset(sock: socket.socket) -> None:
    """Close with RST (SO_LINGER 0): the way a killed client disappears."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def test_http_clients_that_disconnect_mid_request_do_not_wedge_the_server(tiny_queue_server):
    big = [f"{POSITIVE} number {i}" for i in range(64)]
    # Full requests abandoned before the answer, bodies cut short, promised bodies never sent;
    # half closed politely, half reset.
    for i in range(30):
        sock = _connect(tiny_queue_server)
        body = _http_infer_body(big if i % 2 else [POSITIVE])
        if i % 3 == 0:
            sock.sendall(_http_request("embed", body))
        elif i % 3 == 1:
            sock.sendall(_http_request("sentiment", body)[: len(body) // 2])
        else:
            sock.sendall(_http_request("sentiment", b"", content_length=100_000))
        _reset(sock) if i % 2 else sock.close()
    assert_healthy(tiny_queue_server)


# Triton 2.51 (NGC 24.10, the embedded server here) can segfault when a gRPC client cancels a
# request in flight or its deadline expires: triton-inference-server/server issues #7368 and
# #8034, fixed by PRs #7840 and #8078 (Triton 2.57 = NGC 25.04, the release docker-compose.yml
# pins). Seen here within 20-60 such calls. This test runs on a server of its own, and turns
# into an expected failure only for exactly that crash; anything else (a hang, a wrong answer,
# requests stuck in a queue) fails it.
KNOWN_GRPC_CANCEL_CRASH = ("Triton 2.51 segfaults on gRPC cancellation/deadline expiry "
                           "(server #7368/#8034, fixed in 2.57 = NGC 25.04)")


def test_grpc_clients_that_cancel_or_time_out_do_not_wedge_the_server(tiny_repository, tmp_path):
    import signal

    import tritonclient.grpc as grpcclient

    from trtserve_server.embedded import EmbeddedServer, Ports

    server = EmbeddedServer(tiny_repository, Ports.free(), log_path=tmp_path / "triton.log")
    with server:
        server.wait_ready(timeout_s=180)
        client = grpcclient.InferenceServerClient(server.grpc_url)
        data = np.array([[f"{POSITIVE} {i}".encode()] for i in range(64)], dtype=np.object_)
        text = grpcclient.InferInput("TEXT", list(data.shape), "BYTES")
        text.set_data_from_numpy(data)
        calls = [client.async_infer("embed", [text], callback=lambda result, error: None) for _ in range(20)]
        time.sleep(0.01)
        for call in calls:
            call.cancel()
        expired = 0
        for _ in range(20):
            try:
                client.infer("sentiment", [text], client_timeout=0.005)
            except Exception:  # noqa: BLE001 - the deadline is meant to expire
                expired += 1
        client.close()
        assert expired > 0
        time.sleep(1.0)
        if server.process.poll() == -signal.SIGSEGV:
            pytest.xfail(KNOWN_GRPC_CANCEL_CRASH)
        assert server.process.poll() is None, f"tritonserver exited with {server.process.returncode}"
        assert_healthy(server)


# ---- slow clients ------------------------------------------------------------------------


def test_slow_clients_do_not_block_other_clients(tiny_queue_server):
    """Slow senders (a byte at a time) and readers that never read their big answers hold
    connections open while ordinary clients are served in normal time."""
    stop = threading.Event()
    slow_senders = []
    for _ in range(12):
        sock = _connect(tiny_queue_server)
        sock.sendall(_http_request("sentiment", _http_infer_body([POSITIVE]))[:60])
        slow_senders.append(sock)

    def trickle():
        while not stop.is_set():
            for sock in slow_senders:
                try:
                    sock.send(b" ")
                except OSError:
                    pass
            stop.wait(0.2)

    slow_readers = []
    big = _http_request("embed", _http_infer_body([f"{POSITIVE} {i}" for i in range(64)]))
    for _ in range(6):
        sock = _connect(tiny_queue_server)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.settimeout(0.5)
        for _ in range(6):  # ~100 KB answers each, never read
            try:
                sock.sendall(big)
            except OSError:
                break
        slow_readers.append(sock)

    trickler = threading.Thread(target=trickle, daemon=True)
    trickler.start()
    try:
        latencies = []
        for protocol, url in (("http", tiny_queue_server.http_url), ("grpc", tiny_queue_server.grpc_url)):
            with TrtServeClient(url, protocol=protocol, timeout_s=10,
                                retry=RetryPolicy(deadline_s=10, initial_backoff_s=0.02)) as client:
                for i in range(10):
                    start = time.monotonic()
                    assert client.classify(f"{POSITIVE} {i}")[0].label == "positive"
                    latencies.append(time.monotonic() - start)
        assert max(latencies) < 5.0, f"ordinary requests slowed to {max(latencies):.1f}s by slow clients"
    finally:
        stop.set()
        trickler.join()
        for sock in slow_senders + slow_readers:
            _reset(sock)
    assert_healthy(tiny_queue_server)
