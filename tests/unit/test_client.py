"""Unit tests for trtserve_client, without a Triton server.

The error table is fed with exceptions built by tritonclient's own converters (gRPC and HTTP
status formats). For the request/response paths, two small in-process fakes speak the subset
of the KServe v2 protocol the client uses (gRPC servicer from tritonclient's service
definitions, and an HTTP server with binary tensor data), so tritonclient's real encoding and
decoding run; the fake "models" follow the sentiment/embed contract with max_batch_size 4.
"""
from __future__ import annotations

import http.server
import io
import json
import re
import socket
import threading
import time
from concurrent import futures

import grpc
import numpy as np
import pytest
from geventhttpclient.response import HTTPConnectionClosed
from tritonclient.grpc import model_config_pb2, service_pb2, service_pb2_grpc
from tritonclient.grpc._utils import get_error_grpc
from tritonclient.http._utils import _get_error as get_error_http
from tritonclient.utils import InferenceServerException, deserialize_bytes_tensor, serialize_byte_tensor
import trtserve_contract as contract

from trtserve_client import (
    BadInputError,
    Classification,
    InferenceError,
    ModelNotFoundError,
    ModelNotReadyError,
    RequestTimeoutError,
    ServerOverloadedError,
    ServerUnavailableError,
    TrtServeClient,
    TrtServeError,
    split_batches,
    translate_error,
)
from trtserve_client import cli
from trtserve_client.inputs import encode_texts, text_tensor
from trtserve_client.results import decode_classifications, decode_embeddings
from trtserve_server.embedded import free_port  # a port nothing listens on

FAKE_MAX_BATCH = 4
FAKE_EMBED_DIM = 8
FAST_S = 2.0  # "quickly": far below the client timeout used in the same test




# ---------------------------------------------------------------------------------------------
# Error translation
# ---------------------------------------------------------------------------------------------


class FakeRpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self):
        return self._code

    def details(self):
        return self._details

    def debug_error_string(self):
        return f"{self._code.name}:{self._details}"


class FakeHttpResponse:
    def __init__(self, status_code: int, body: str) -> None:
        self.status_code, self._body = status_code, body

    def read(self) -> bytes:
        return self._body.encode()


def grpc_exception(code_name: str, message: str) -> InferenceServerException:
    """What tritonclient.grpc raises: status "StatusCode.<NAME>"."""
    return get_error_grpc(FakeRpcError(getattr(grpc.StatusCode, code_name), message))


def http_exception(http_code: int, message: str) -> InferenceServerException:
    """What tritonclient.http raises: status "<code>", message from the JSON error body."""
    return get_error_http(FakeHttpResponse(http_code, json.dumps({"error": message})))


# (gRPC code, HTTP code, message, expected class): the same Triton error seen over both.
SERVER_ERRORS = [
    ("INVALID_ARGUMENT", 400,
     "[request id: <id_unknown>] inference request batch-size must be <= 64 for 'sentiment'",
     BadInputError),
    ("INVALID_ARGUMENT", 400, "unexpected inference output 'LABEL' for model 'embed'", BadInputError),
    ("INVALID_ARGUMENT", 400,
     "TEXT is not valid UTF-8: 'utf-8' codec can't decode byte 0xff in position 0", BadInputError),
    ("NOT_FOUND", 404, "Request for unknown model: 'nope' is not found", ModelNotFoundError),
    ("INVALID_ARGUMENT", 400, "Request for unknown model: 'nope' is not found", ModelNotFoundError),
    ("NOT_FOUND", 404, "Request for unknown model: 'sentiment' has no available versions",
     ModelNotReadyError),
    ("UNAVAILABLE", 503, "Request for unknown model: 'sentiment' version 1 is not at ready state",
     ModelNotReadyError),
    ("UNAVAILABLE", 503, "[request id: <id_unknown>] Exceeds maximum queue size",
     ServerOverloadedError),
    ("UNAVAILABLE", 503, "Request timeout expired", RequestTimeoutError),
    ("UNAVAILABLE", 503, "Server not ready", ServerUnavailableError),
    ("INTERNAL", 500,
     "Failed to process the request(s) for model 'embed_0', message: UnicodeDecodeError: "
     "'utf-8' codec can't decode byte 0xff in position 0: invalid start byte", BadInputError),
    # a dead or stopped Python stub: the model is down until it is reloaded (issue 15), retryable
    ("INTERNAL", 500, "Stub process 'sentiment_0_0' is not healthy.", ModelNotReadyError),
    ("INTERNAL", 500, "ValueError: the postprocess raised", InferenceError),
    ("UNIMPLEMENTED", 501, "the server does not support trace", InferenceError),
]


@pytest.mark.parametrize("code_name,http_code,message,expected", SERVER_ERRORS)
@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_server_errors_translate_the_same_over_both_protocols(
    protocol, code_name, http_code, message, expected
):
    if protocol == "grpc":
        original, status = grpc_exception(code_name, message), f"StatusCode.{code_name}"
    else:
        original, status = http_exception(http_code, message), str(http_code)
    assert original.status() == status  # the format tritonclient really produces

    error = translate_error(original)

    assert type(error) is expected
    assert error.status == status
    assert message in str(error)


@pytest.mark.parametrize(
    "code_name,message,expected",
    [
        ("UNAVAILABLE", "failed to connect to all addresses; last error: UNKNOWN: "
         "ipv4:127.0.0.1:1: Failed to connect to remote host: Connection refused",
         ServerUnavailableError),
        ("UNAVAILABLE", "Socket closed", ServerUnavailableError),
        ("UNAVAILABLE", "DNS resolution failed for nosuchhost:8001", ServerUnavailableError),
        ("UNAVAILABLE", "some future reason to refuse work", ServerOverloadedError),
        ("DEADLINE_EXCEEDED", "Deadline Exceeded", RequestTimeoutError),
        ("RESOURCE_EXHAUSTED", "Received message larger than max (5000 vs. 4194304)", BadInputError),
        ("CANCELLED", "Locally cancelled by application!", InferenceError),
        ("UNKNOWN", "Exception iterating responses", InferenceError),
    ],
)
def test_grpc_transport_statuses(code_name, message, expected):
    assert type(translate_error(grpc_exception(code_name, message))) is expected


def test_http_503_with_an_unknown_message_is_overload_and_undecodable_500_is_inference_error():
    assert type(translate_error(http_exception(503, "busy"))) is ServerOverloadedError
    undecodable = get_error_http(FakeHttpResponse(500, "<html>proxy error</html>"))
    assert type(translate_error(undecodable)) is InferenceError


@pytest.mark.parametrize(
    "message,expected",
    [
        ("got unexpected numpy array shape [2], expected [2, 1]", BadInputError),
        ("url should not include the scheme", BadInputError),
        ("failed to obtain inference response", InferenceError),
    ],
)
def test_client_side_tritonclient_errors_have_no_status(message, expected):
    error = translate_error(InferenceServerException(msg=message))
    assert type(error) is expected
    assert error.status is None


@pytest.mark.parametrize(
    "original,expected",
    [
        (ConnectionRefusedError(111, "Connection refused"), ServerUnavailableError),
        (ConnectionResetError(104, "Connection reset by peer"), ServerUnavailableError),
        (socket.gaierror(-2, "Name or service not known"), ServerUnavailableError),
        (OSError(113, "No route to host"), ServerUnavailableError),
        (TimeoutError("timed out"), RequestTimeoutError),
        (HTTPConnectionClosed("connection closed."), ServerUnavailableError),
        (FakeRpcError(grpc.StatusCode.UNAVAILABLE, "Exceeds maximum queue size"),
         ServerOverloadedError),
        (FakeRpcError(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded"), RequestTimeoutError),
        (RuntimeError("something else"), InferenceError),
    ],
)
def test_low_level_errors(original, expected):
    assert type(translate_error(original)) is expected


def test_gevent_timeout_is_a_request_timeout():
    import gevent

    assert type(translate_error(gevent.Timeout(1.0))) is RequestTimeoutError


def test_translation_adds_context_keeps_one_line_and_passes_trtserve_errors_through():
    error = translate_error(http_exception(500, "line one\nline two"), context="model 'm' at h:1")
    assert str(error) == "model 'm' at h:1: [500] line one line two"
    already = BadInputError("x")
    assert translate_error(already) is already


def test_hierarchy_and_retryability():
    for cls in (ServerUnavailableError, ModelNotReadyError, BadInputError, RequestTimeoutError,
                ServerOverloadedError, InferenceError):
        assert issubclass(cls, TrtServeError)
    assert issubclass(ModelNotFoundError, ModelNotReadyError)
    retryable = {cls.__name__ for cls in (ServerUnavailableError, ModelNotReadyError,
                                          ModelNotFoundError, BadInputError, RequestTimeoutError,
                                          ServerOverloadedError, InferenceError) if cls.retryable}
    assert retryable == {"ServerUnavailableError", "ModelNotReadyError", "RequestTimeoutError",
                         "ServerOverloadedError"}


# ---------------------------------------------------------------------------------------------
# Inputs: validation, encoding, chunking (pure)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "count,size,expected",
    [(0, 64, []), (1, 64, [1]), (64, 64, [64]), (65, 64, [64, 1]), (130, 64, [64, 64, 2]),
     (5, 1, [1] * 5), (3, 100, [3])],
)
def test_split_batches_sizes(count, size, expected):
    assert [len(chunk) for chunk in split_batches(list(range(count)), size)] == expected


def test_split_batches_preserves_order():
    rng = np.random.default_rng(0)
    for _ in range(50):
        items = [f"t{i}" for i in range(int(rng.integers(0, 300)))]
        size = int(rng.integers(1, 70))
        chunks = split_batches(items, size)
        assert [item for chunk in chunks for item in chunk] == items
        assert all(0 < len(chunk) <= size for chunk in chunks)


@pytest.mark.parametrize("size", [0, -1, 2.5, None, True])
def test_split_batches_rejects_bad_sizes(size):
    with pytest.raises(ValueError):
        split_batches([1, 2], size)


def test_encode_texts_accepts_a_str_sequences_iterables_and_bytes_unchanged():
    assert encode_texts("héllo") == ["héllo".encode()]
    assert encode_texts(b"\xff") == [b"\xff"]  # one text, not a sequence of ints
    assert encode_texts(["a", b"\xff\xfe", "ü"]) == [b"a", b"\xff\xfe", "ü".encode()]
    assert encode_texts(t for t in ("x", "y")) == [b"x", b"y"]
    assert encode_texts(np.array(["a", "b"])) == [b"a", b"b"]
    assert encode_texts([]) == []


@pytest.mark.parametrize("texts,index", [(["ok", 3], 1), ([None], 0), (["a", "b", ["c"]], 2)])
def test_encode_texts_rejects_non_strings_naming_the_index(texts, index):
    with pytest.raises(BadInputError, match=rf"texts\[{index}\]"):
        encode_texts(texts)


def test_encode_texts_rejects_unencodable_strings_and_non_iterables():
    with pytest.raises(BadInputError, match="UTF-8"):
        encode_texts(["ok", "lone surrogate \ud800"])
    with pytest.raises(BadInputError):
        encode_texts(42)


def test_text_tensor_shapes():
    batched = text_tensor([b"a", b"b", b"c"])
    assert batched.shape == (3, 1) and batched.dtype == np.object_
    assert batched[:, 0].tolist() == [b"a", b"b", b"c"]
    assert text_tensor([b"a"], batched=False).shape == (1,)


# ---------------------------------------------------------------------------------------------
# Result decoding (pure)
# ---------------------------------------------------------------------------------------------


def test_decode_classifications_keys_probabilities_by_label_names():
    [first, second] = decode_classifications(
        np.array([[b"positive"], [b"negative"]], dtype=object),
        np.array([[0.75], [0.6]], dtype=np.float32),
        np.array([[0.25, 0.75], [0.6, 0.4]], dtype=np.float32),
        count=2,
    )
    assert first == Classification("positive", 0.75, {"negative": 0.25, "positive": 0.75})
    assert second.label == "negative" and second.probabilities["positive"] == pytest.approx(0.4)


def test_decode_classifications_accepts_str_labels_from_json_responses():
    [result] = decode_classifications(np.array([["negative"]], dtype=object),
                                      np.array([[0.9]]), np.array([[0.9, 0.1]]), count=1)
    assert result.label == "negative"


@pytest.mark.parametrize(
    "labels,probabilities,score,match",
    [
        (("negative", "positive", "neutral"), [[0.25, 0.75]], [[0.75]], "3 label names"),
        (("bad", "good"), [[0.25, 0.75]], [[0.75]], "not one of labels"),
        (("positive", "negative"), [[0.25, 0.75]], [[0.75]], "labels in the model's order"),
    ],
)
def test_decode_classifications_rejects_mismatched_contracts(labels, probabilities, score, match):
    with pytest.raises(InferenceError, match=match):
        decode_classifications(np.array([[b"positive"]], dtype=object), np.array(score),
                               np.array(probabilities), count=1, labels=labels)


def test_decoders_check_presence_and_row_count():
    with pytest.raises(InferenceError, match="no EMBEDDING"):
        decode_embeddings(None, count=1)
    with pytest.raises(InferenceError, match="2 row"):
        decode_embeddings(np.zeros((3, 4)), count=2)
    embeddings = decode_embeddings(np.ones((2, 4), dtype=np.float64), count=2)
    assert embeddings.dtype == np.float32 and embeddings.shape == (2, 4)


# ---------------------------------------------------------------------------------------------
# Fake servers
# ---------------------------------------------------------------------------------------------


class FakeError(Exception):
    def __init__(self, grpc_code: str, http_code: int, message: str) -> None:
        super().__init__(message)
        self.grpc_code, self.http_code, self.message = grpc_code, http_code, message


def expected_sentiment(text: bytes) -> tuple[str, float, np.ndarray]:
    """The fake classifier: 'good' is positive; the text length nudges the score (order check)."""
    positive = (0.8 if b"good" in text else 0.2) + len(text) / 1000
    probabilities = np.array([1 - positive, positive], dtype=np.float32)
    index = int(probabilities.argmax())
    return ("negative", "positive")[index], float(probabilities[index]), probabilities


def expected_embedding(text: bytes) -> np.ndarray:
    vector = np.arange(1, FAKE_EMBED_DIM + 1, dtype=np.float32) * (len(text) + 1)
    vector[len(text) % FAKE_EMBED_DIM] += 100
    return vector / np.linalg.norm(vector)


class FakeBackend:
    """Model behaviour shared by both fake servers; records what it received.

    Models: ``sentiment`` and ``embed`` (max_batch_size 4), ``nobatch`` (a sentiment model
    with max_batch_size 0), ``busy`` (queue full), ``slow`` (sleeps), ``reject`` (invalid
    argument), ``flaky`` (fails ``flaky_failures`` times, then works); anything else is unknown.
    """

    MODELS = {"sentiment": FAKE_MAX_BATCH, "embed": FAKE_MAX_BATCH, "nobatch": 0, "busy": 4,
              "slow": 4, "reject": 4, "flaky": 4}

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.config_requests: list[str] = []
        self.batches: list[list[bytes]] = []
        self.flaky_failures = 0
        self.slow_s = 1.0

    def max_batch_size(self, model: str) -> int:
        self.config_requests.append(model)
        if model not in self.MODELS:
            raise FakeError("NOT_FOUND", 404, f"Request for unknown model: '{model}' is not found")
        return self.MODELS[model]

    def infer(self, model: str, texts: list[bytes], batched: bool) -> dict[str, np.ndarray]:
        """Outputs with a batch axis; the servers drop it for non-batching models."""
        if model not in self.MODELS:
            raise FakeError("NOT_FOUND", 404, f"Request for unknown model: '{model}' is not found")
        limit = self.MODELS[model]
        if batched != (limit > 0) or (limit and len(texts) > limit):
            raise FakeError("INVALID_ARGUMENT", 400,
                            f"inference request batch-size must be <= {limit} for '{model}'")
        self.batches.append(list(texts))
        if model == "busy":
            raise FakeError("UNAVAILABLE", 503, "Exceeds maximum queue size")
        if model == "reject":
            raise FakeError("INVALID_ARGUMENT", 400, "TEXT is not valid UTF-8")
        if model == "slow":
            time.sleep(self.slow_s)
        if model == "flaky" and self.flaky_failures > 0:
            self.flaky_failures -= 1
            raise FakeError("INTERNAL", 500, "Stub process 'flaky_0_0' is not healthy.")
        if model == "embed":
            return {contract.EMBEDDING: np.stack([expected_embedding(t) for t in texts])}
        rows = [expected_sentiment(t) for t in texts]
        return {
            contract.LABEL: np.array([[label.encode()] for label, _, _ in rows], dtype=object),
            contract.SCORE: np.array([[score] for _, score, _ in rows], dtype=np.float32),
            contract.PROBABILITIES: np.stack([probs for _, _, probs in rows]),
        }


def _datatype(array: np.ndarray) -> str:
    return "BYTES" if array.dtype == np.object_ else "FP32"


class FakeGrpcTriton(service_pb2_grpc.GRPCInferenceServiceServicer):
    def __init__(self, backend: FakeBackend) -> None:
        self.backend = backend

    def _abort(self, context, error: FakeError):
        context.abort(getattr(grpc.StatusCode, error.grpc_code), error.message)

    def ServerLive(self, request, context):
        return service_pb2.ServerLiveResponse(live=True)

    def ModelConfig(self, request, context):
        try:
            limit = self.backend.max_batch_size(request.name)
        except FakeError as e:
            self._abort(context, e)
        return service_pb2.ModelConfigResponse(
            config=model_config_pb2.ModelConfig(name=request.name, max_batch_size=limit)
        )

    def ModelInfer(self, request, context):
        [text_input] = request.inputs
        assert text_input.name == contract.TEXT and text_input.datatype == "BYTES"
        texts = list(deserialize_bytes_tensor(request.raw_input_contents[0]))
        batched = len(text_input.shape) == 2
        try:
            outputs = self.backend.infer(request.model_name, texts, batched)
        except FakeError as e:
            self._abort(context, e)
        # Requested outputs the model lacks are left out (exercises the client's own check).
        wanted = [o.name for o in request.outputs if o.name in outputs] or list(outputs)
        response = service_pb2.ModelInferResponse(model_name=request.model_name)
        for name in wanted:
            array = outputs[name] if batched else outputs[name][0]
            tensor = response.outputs.add(name=name, datatype=_datatype(array))
            tensor.shape.extend(array.shape)
            response.raw_output_contents.append(
                serialize_byte_tensor(array).item() if array.dtype == np.object_
                else array.astype(np.float32).tobytes()
            )
        return response


class FakeHttpHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    backend: FakeBackend  # set on a subclass per server

    def log_message(self, *args):
        pass

    def _reply(self, code: int, body: dict | None = None) -> None:
        data = json.dumps(body).encode() if body is not None else b""
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _model(self) -> str:
        return self.path.split("/")[3]

    def do_GET(self):
        if self.path == "/v2/health/live":
            return self._reply(200)
        try:
            limit = self.backend.max_batch_size(self._model())
        except FakeError as e:
            return self._reply(e.http_code, {"error": e.message})
        self._reply(200, {"name": self._model(), "max_batch_size": limit})

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        header_length = int(self.headers.get("Inference-Header-Content-Length", len(body)))
        request = json.loads(body[:header_length])
        [text_input] = request["inputs"]
        size = text_input["parameters"]["binary_data_size"]  # the client sends binary data
        texts = list(deserialize_bytes_tensor(body[header_length:header_length + size]))
        batched = len(text_input["shape"]) == 2
        try:
            outputs = self.backend.infer(self._model(), texts, batched)
        except FakeError as e:
            return self._reply(e.http_code, {"error": e.message})
        wanted = [o["name"] for o in request.get("outputs", []) if o["name"] in outputs] or list(outputs)
        reply = []
        for name in wanted:
            array = outputs[name] if batched else outputs[name][0]
            data = ([t.decode() for t in array.flatten()] if array.dtype == np.object_
                    else array.flatten().tolist())
            reply.append({"name": name, "datatype": _datatype(array), "shape": list(array.shape),
                          "data": data})
        self._reply(200, {"model_name": self._model(), "outputs": reply})


@pytest.fixture(scope="module")
def fake_servers():
    backend = FakeBackend()
    grpc_server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(FakeGrpcTriton(backend), grpc_server)
    grpc_port = grpc_server.add_insecure_port("127.0.0.1:0")
    grpc_server.start()
    handler = type("Handler", (FakeHttpHandler,), {"backend": backend})
    http_server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    http_server.daemon_threads = True
    thread = threading.Thread(target=http_server.serve_forever, daemon=True)
    thread.start()
    urls = {"grpc": f"127.0.0.1:{grpc_port}", "http": f"127.0.0.1:{http_server.server_address[1]}"}
    yield backend, urls
    http_server.shutdown()
    http_server.server_close()
    grpc_server.stop(0)


@pytest.fixture(params=["grpc", "http"])
def served(request, fake_servers):
    """(protocol, url, backend) of a fake server, for each protocol."""
    backend, urls = fake_servers
    backend.reset()
    return request.param, urls[request.param], backend


# ---------------------------------------------------------------------------------------------
# Client against the fakes
# ---------------------------------------------------------------------------------------------

TEXTS = [f"{'good' if i % 3 else 'bad'} text number {i}" for i in range(10)]


def test_classify_chunks_by_model_config_and_keeps_order(served):
    protocol, url, backend = served
    with TrtServeClient(url, protocol=protocol) as client:
        results = client.classify(TEXTS)
        assert client.classify("a good one")[0].label == "positive"

    assert [len(batch) for batch in backend.batches] == [4, 4, 2, 1]
    assert backend.config_requests == ["sentiment"]  # read once, cached
    for text, result in zip(TEXTS, results):
        label, score, probabilities = expected_sentiment(text.encode())
        assert result.label == label
        assert result.score == pytest.approx(score)
        assert result.probabilities == pytest.approx(dict(zip(("negative", "positive"), probabilities)))


def test_embed_returns_float32_rows_in_order(served):
    protocol, url, backend = served
    with TrtServeClient(url, protocol=protocol) as client:
        embeddings = client.embed(TEXTS)
    assert embeddings.dtype == np.float32 and embeddings.shape == (len(TEXTS), FAKE_EMBED_DIM)
    np.testing.assert_allclose(embeddings, np.stack([expected_embedding(t.encode()) for t in TEXTS]),
                               rtol=1e-6)
    assert [len(batch) for batch in backend.batches] == [4, 4, 2]


def test_max_batch_size_override_skips_the_config_request(served):
    protocol, url, backend = served
    with TrtServeClient(url, protocol=protocol, max_batch_size=3) as client:
        assert client.model_max_batch_size("sentiment") == 3
        assert len(client.classify(TEXTS[:7])) == 7
    assert [len(batch) for batch in backend.batches] == [3, 3, 1]
    assert backend.config_requests == []


def test_a_model_without_batching_gets_one_text_per_request(served):
    protocol, url, backend = served
    with TrtServeClient(url, protocol=protocol) as client:
        assert client.model_max_batch_size("nobatch") == 1
        results = client.classify(["good", "bad", "good!"], model="nobatch")
    assert [r.label for r in results] == ["positive", "negative", "positive"]
    assert [len(batch) for batch in backend.batches] == [1, 1, 1]


def test_bytes_items_reach_the_server_unchanged(served):
    protocol, url, backend = served
    with TrtServeClient(url, protocol=protocol) as client:
        client.classify([b"\xff\xfe invalid utf-8 but good", "ünïcode"])
    assert backend.batches == [[b"\xff\xfe invalid utf-8 but good", "ünïcode".encode()]]


def test_empty_input_and_invalid_items_send_nothing(served):
    protocol, url, backend = served
    with TrtServeClient(url, protocol=protocol) as client:
        assert client.classify([]) == []
        assert client.embed([]).shape == (0, 0)
        with pytest.raises(BadInputError, match=r"texts\[1\]"):
            client.classify(["fine", 42])
    assert backend.batches == [] and backend.config_requests == []


@pytest.mark.parametrize(
    "model,max_batch_size,expected",
    [("nope", None, ModelNotFoundError), ("busy", None, ServerOverloadedError),
     ("reject", None, BadInputError), ("sentiment", 6, BadInputError)],  # 6 > server's 4
)
def test_server_errors_are_typed_and_chained(served, model, max_batch_size, expected):
    protocol, url, _ = served
    with TrtServeClient(url, protocol=protocol, max_batch_size=max_batch_size) as client:
        with pytest.raises(expected) as caught:
            client.classify(TEXTS[:6], model=model)
    assert isinstance(caught.value.__cause__, InferenceServerException)
    assert model in str(caught.value) and url in str(caught.value)


def test_client_timeout_raises_request_timeout_error(served):
    protocol, url, backend = served
    backend.slow_s = 1.5
    with TrtServeClient(url, protocol=protocol, timeout_s=0.3, max_batch_size=4) as client:
        started = time.monotonic()
        with pytest.raises(RequestTimeoutError):
            client.classify("x", model="slow")
    assert time.monotonic() - started < 1.2


def test_wait_ready_polls_until_a_real_inference_succeeds(served):
    protocol, url, backend = served
    backend.flaky_failures = 2  # e.g. a dead Python stub: health green, inference failing
    with TrtServeClient(url, protocol=protocol) as client:
        assert client.is_live()
        waited = client.wait_ready("flaky", timeout_s=10, poll_interval_s=0.01)
    assert 0 <= waited < 5
    assert len(backend.batches) == 3 and backend.flaky_failures == 0


def test_wait_ready_gives_up_with_the_last_error_class(served):
    protocol, url, backend = served
    backend.flaky_failures = 10_000
    with TrtServeClient(url, protocol=protocol) as client:
        # a dead stub reads as a model that is down (ModelNotReadyError); the class is kept
        with pytest.raises(ModelNotReadyError, match="still failing after") as caught:
            client.wait_ready("flaky", timeout_s=0.2, poll_interval_s=0.02)
        assert type(caught.value.__cause__) is ModelNotReadyError
        with pytest.raises(BadInputError):  # not retried: waiting would not help
            client.wait_ready("reject", timeout_s=10, poll_interval_s=0.01)
    assert sum(batch == [b"trtserve readiness probe"] for batch in backend.batches) > 2


def test_wait_ready_checks_each_model(served):
    protocol, url, backend = served
    with TrtServeClient(url, protocol=protocol) as client:
        client.wait_ready(["sentiment", "embed"], timeout_s=0)
        with pytest.raises(ModelNotFoundError):
            client.wait_ready(["sentiment", "nope"], timeout_s=0)


# ---------------------------------------------------------------------------------------------
# Client against closed and silent ports
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_a_closed_port_raises_server_unavailable_quickly(protocol):
    url = f"127.0.0.1:{free_port()}"
    with TrtServeClient(url, protocol=protocol, timeout_s=10) as client:
        assert client.is_live() is False
        for call in (lambda: client.classify("x"), lambda: client.embed(["x"]),
                     lambda: client.wait_ready("sentiment", timeout_s=0)):
            started = time.monotonic()
            with pytest.raises(ServerUnavailableError) as caught:
                call()
            assert time.monotonic() - started < FAST_S
            assert caught.value.__cause__ is not None
            assert url in str(caught.value)


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_a_silent_server_raises_request_timeout(protocol):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as silent:  # accepts, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"127.0.0.1:{silent.getsockname()[1]}"
        with TrtServeClient(url, protocol=protocol, timeout_s=0.3, max_batch_size=4) as client:
            started = time.monotonic()
            with pytest.raises(RequestTimeoutError):
                client.classify("x")
            assert time.monotonic() - started < FAST_S


@pytest.mark.parametrize(
    "kwargs",
    [{"protocol": "websocket"}, {"url": "http://127.0.0.1:8000"}, {"timeout_s": 0},
     {"max_batch_size": 0}, {"labels": ("only",)}, {"labels": ("a", "a")}],
)
def test_constructor_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        TrtServeClient(**kwargs)


def test_default_urls_follow_the_protocol():
    assert TrtServeClient(protocol="grpc").url == "127.0.0.1:8001"
    assert TrtServeClient(protocol="http").url == "127.0.0.1:8000"


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------


def test_cli_options_work_before_and_after_the_subcommand():
    parser = cli.build_parser()
    args = parser.parse_args(["classify", "a", "b"])
    assert (args.texts, args.model, args.protocol, args.url, args.timeout, args.json) == (
        ["a", "b"], "sentiment", "grpc", None, 10.0, False)
    args = parser.parse_args(["--protocol", "http", "--timeout", "3", "embed", "--json", "x"])
    assert (args.command, args.protocol, args.timeout, args.json, args.model) == (
        "embed", "http", 3.0, True, "embed")
    args = parser.parse_args(["--url", "a:1", "ready", "--url", "b:2", "--model", "m1", "--model", "m2"])
    assert (args.url, args.models, args.wait) == ("b:2", ["m1", "m2"], 0.0)


def test_cli_url_resolution():
    assert cli.resolve_url(None, "grpc", {}) == "127.0.0.1:8001"
    assert cli.resolve_url(None, "http", {}) == "127.0.0.1:8000"
    assert cli.resolve_url(None, "http", {"TRTSERVE_URL": "h:9"}) == "h:9"
    assert cli.resolve_url("x:1", "http", {"TRTSERVE_URL": "h:9"}) == "x:1"


def test_cli_reads_texts_from_stdin_for_none_or_dash():
    assert cli.resolve_texts([], io.StringIO("one\n\n  \ntwo\r\n")) == ["one", "two"]
    assert cli.resolve_texts(["a", "-", "b", "-"], io.StringIO("x\ny\n")) == ["a", "x", "y", "b"]
    assert cli.resolve_texts(["a"], io.StringIO("unused")) == ["a"]


@pytest.mark.parametrize(
    "argv,code",
    [(["--help"], 0), ([], 2), (["bogus"], 2), (["classify", "--timeout", "0", "x"], 2),
     (["--protocol", "ftp", "classify", "x"], 2), (["ready", "--wait", "-1"], 2)],
)
def test_cli_usage(argv, code, capsys):
    assert cli.main(argv) == code


@pytest.mark.parametrize(
    "error,code",
    [(BadInputError("x"), 2), (ServerUnavailableError("x"), 3), (RequestTimeoutError("x"), 3),
     (ServerOverloadedError("x"), 3), (ModelNotFoundError("x"), 1), (ModelNotReadyError("x"), 1),
     (InferenceError("x"), 1)],
)
def test_cli_exit_code_table(error, code):
    assert cli.exit_code_for(error) == code


def one_error_line(stderr: str, error_class: type[TrtServeError]) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith(f"trtserve: {error_class.__name__}: "), stderr
    return lines[0]


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_cli_closed_port_exits_3(protocol, capsys, monkeypatch):
    monkeypatch.setenv("TRTSERVE_URL", f"127.0.0.1:{free_port()}")
    assert cli.main(["--protocol", protocol, "classify", "some text"]) == 3
    one_error_line(capsys.readouterr().err, ServerUnavailableError)


def test_cli_url_with_a_scheme_exits_2(capsys):
    assert cli.main(["classify", "--url", "http://127.0.0.1:1", "x"]) == 2
    assert "ValueError" in capsys.readouterr().err


def test_cli_classify_prints_a_line_per_text(served, capsys, monkeypatch):
    protocol, url, _ = served
    monkeypatch.setattr("sys.stdin", io.StringIO("bad from stdin\n"))
    argv = ["classify", "--protocol", protocol, "--url", url, "a good film", "-"]
    assert cli.main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[0] for line in lines] == ["positive", "negative"]
    assert lines[1].endswith("\tbad from stdin")
    assert re.fullmatch(r"positive\t0\.\d{4}\ta good film", lines[0])


def test_cli_json_outputs(served, capsys):
    protocol, url, _ = served
    assert cli.main(["--json", "--protocol", protocol, "--url", url, "classify", "good"]) == 0
    [record] = json.loads(capsys.readouterr().out)
    assert record["text"] == "good" and record["label"] == "positive"
    assert set(record["probabilities"]) == {"negative", "positive"}

    assert cli.main(["embed", "--json", "--protocol", protocol, "--url", url, "x", "yy"]) == 0
    records = json.loads(capsys.readouterr().out)
    assert [len(r["embedding"]) for r in records] == [FAKE_EMBED_DIM, FAKE_EMBED_DIM]

    assert cli.main(["embed", "--protocol", protocol, "--url", url, "x"]) == 0
    assert capsys.readouterr().out.startswith(f"dim={FAKE_EMBED_DIM}\t[")


def test_cli_ready(served, capsys):
    protocol, url, _ = served
    assert cli.main(["ready", "--protocol", protocol, "--url", url]) == 0
    assert capsys.readouterr().out.startswith("ready: sentiment, embed at ")
    assert cli.main(["ready", "--protocol", protocol, "--url", url, "--model", "nope"]) == 1
    one_error_line(capsys.readouterr().err, ModelNotFoundError)


@pytest.mark.parametrize(
    "argv,code,error_class",
    [(["classify", "--model", "reject", "x"], 2, BadInputError),
     (["classify", "--model", "busy", "x"], 3, ServerOverloadedError),
     (["classify", "--model", "slow", "--timeout", "0.3", "x"], 3, RequestTimeoutError),
     (["classify", "--model", "embed", "x"], 1, InferenceError)],  # no LABEL in the response
)
def test_cli_server_errors_map_to_exit_codes(served, argv, code, error_class, capsys):
    protocol, url, _ = served
    assert cli.main([*argv, "--protocol", protocol, "--url", url]) == code
    one_error_line(capsys.readouterr().err, error_class)
