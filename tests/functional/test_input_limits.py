"""Oversized and malformed requests (issue 15): a clear error, bounded memory, the next request answered.

The tokenizer enforces ``[batching] max_request_text_bytes`` / ``max_request_texts`` before it
decodes or tokenizes anything; Triton itself rejects bodies it cannot parse.
"""
from __future__ import annotations

import http.client
import json
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from loadtest.faults import descendants
from trtserve_client import BadInputError, TrtServeClient
from trtserve_server.deployments import model_of_instance
from trtserve_server.processes import stubs_of

from .conftest import served_models

POSITIVE = "a gripping, beautifully acted film"
MB = 1_000_000


def _rss_mb(pid: int) -> float:
    """Resident memory of ``pid`` and everything below it (the server and its stubs), in MB."""
    total = 0
    for p in (pid, *descendants(pid)):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total / MB


def _post(server, path: str, body: bytes, headers: dict | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(server.host, server.ports.http, timeout=120)
    try:
        conn.request("POST", path, body=body, headers={"Content-Type": "application/json", **(headers or {})})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def _answers_next(server) -> None:
    for protocol, url in (("http", server.http_url), ("grpc", server.grpc_url)):
        with TrtServeClient(url, protocol=protocol, timeout_s=30) as client:
            assert client.classify(POSITIVE)[0].label == "positive"


def _shm_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("RssShmem:"):
            return int(line.split()[1]) * 1024 / MB
    return 0.0


def test_a_50_mb_http_body_is_refused_clearly_with_bounded_memory(server):
    text = "a" * (50 * MB)
    body = json.dumps({"inputs": [{"name": "TEXT", "shape": [1, 1], "datatype": "BYTES", "data": [text]}]}).encode()
    del text
    _answers_next(server)
    baseline = _rss_mb(server.process.pid)
    # The door (the one model; an ensemble's tokenizer) may run several instances ("auto"), each
    # a stub with its own shared-memory region, which Triton grows to the largest request it
    # carried and keeps: the bound is one body per instance, reached once each has had one.
    door = served_models(server, "sentiment")["door"]
    stubs = [st for st in stubs_of(server.process.pid) if model_of_instance(st.instance, [door])]
    assert stubs, f"no stub of {door}"

    def refused(at_once: int = 1) -> float:
        with ThreadPoolExecutor(at_once) as pool:
            answers = list(pool.map(lambda _: _post(server, "/v2/models/sentiment/infer", body), range(at_once)))
        for status, payload in answers:
            assert status == 400, payload[:300]
            assert b"over the limit of 1048576 bytes" in payload, payload[:300]
        rss = _rss_mb(server.process.pid)
        _answers_next(server)
        return rss

    # One instance is preferred (triton_config.preferred_instances): one request at a time always
    # lands on it, so the bodies go out as many at once as there are instances to reach the pool.
    warmed = [refused()]
    while any(_shm_mb(st.pid) < 40 for st in stubs) and len(warmed) < 8 * len(stubs):
        warmed.append(refused(len(stubs)))
    assert all(_shm_mb(st.pid) >= 40 for st in stubs), "the 50 MB bodies never reached every instance"
    peaks = [refused() for _ in range(3)]
    print(f"server tree RSS: {baseline:.0f} MB before, {[round(p) for p in warmed]} MB while each of "
          f"{len(stubs)} instance(s) got a 50 MB body, then {[round(p) for p in peaks]} MB")
    # bounded: repeating the request does not grow the server further (one transient copy in a
    # stub at most), and it holds no copy per request
    assert max(peaks) - warmed[-1] < 60, (warmed, peaks)
    assert max(peaks) - baseline < 400 * len(stubs), (baseline, warmed, peaks)


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_a_batch_of_64_texts_of_1_mb_is_refused_before_tokenization(server, protocol):
    texts = np.array([[b"b" * MB] for _ in range(64)], dtype=np.object_)
    with TrtServeClient(server.grpc_url if protocol == "grpc" else server.http_url,
                        protocol=protocol, timeout_s=120) as client:
        with pytest.raises(BadInputError, match=r"over the limit of 1048576 bytes \(64000000 bytes in 64 text"):
            client.classify([t[0] for t in texts])
        assert client.classify(POSITIVE)[0].label == "positive"


def test_malformed_json_bodies_get_400_and_the_server_answers_on(server):
    for body in (b"{", b'{"inputs": [', b"not json at all", b'{"inputs": 5}', b"\xff\xfe\x00garbage",
                 json.dumps({"inputs": [{"name": "TEXT", "shape": [1, 1], "datatype": "BYTES"}]}).encode()):
        status, payload = _post(server, "/v2/models/sentiment/infer", body)
        # Triton 2.51 answers a body it cannot parse with 500 "failed to parse the request JSON
        # buffer: <rapidjson's reason> at <offset>", and a parsed but wrong one with 400
        assert status in (400, 500), (body, status, payload[:200])
        error = json.loads(payload)["error"]
        assert re.search(r"parse|unexpected|expect|missing|must|invalid", error, re.I), (body, error)
        print(f"{body[:30]!r}: {status} {error}")
    # a binary-tensor header that promises more bytes than the body holds
    header = json.dumps({"inputs": [{"name": "TEXT", "shape": [1, 1], "datatype": "BYTES",
                                     "parameters": {"binary_data_size": 1000}}]}).encode()
    status, payload = _post(server, "/v2/models/sentiment/infer", header + b"\x03\x00\x00\x00abc",
                            headers={"Inference-Header-Content-Length": str(len(header))})
    assert status in (400, 500), (status, payload[:200])
    print(f"short binary tensor: {status} {json.loads(payload)['error']}")
    _answers_next(server)


def test_malformed_protobuf_bodies_get_an_error_and_the_server_answers_on(server):
    channel = grpc.insecure_channel(server.grpc_url)
    raw_infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer",
                                    request_serializer=None, response_deserializer=None)
    for body in (b"\xff\xff\xff\xff\x0f garbage", b"\x0a\xff\xff\xff\xff\x0fsentiment", b"\x00" * 1000):
        with pytest.raises(grpc.RpcError) as caught:
            raw_infer(body, timeout=30)
        assert caught.value.code() in (grpc.StatusCode.INTERNAL, grpc.StatusCode.INVALID_ARGUMENT,
                                       grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNAVAILABLE), caught.value
    channel.close()
    # a well-formed request whose raw bytes disagree with its declared shape
    client = grpcclient.InferenceServerClient(server.grpc_url)
    request_input = grpcclient.InferInput("TEXT", [2, 1], "BYTES")
    request_input.set_data_from_numpy(np.array([[b"only one"]], dtype=np.object_).repeat(2, 0))
    request_input._raw_content = b"\x05\x00\x00\x00abc"  # claims 5 bytes, holds 3
    with pytest.raises(Exception):
        client.infer("sentiment", [request_input])
    client.close()
    _answers_next(server)
