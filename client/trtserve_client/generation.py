"""Streaming generation: the request tensors, the two streaming transports, and the stream object.

gRPC uses Triton's bidirectional stream (``start_stream`` / ``async_stream_infer``); HTTP uses
Triton's ``/v2/models/<model>/generate_stream`` (server-sent events), so both protocols stream.
Each response carries ``TEXT``; the last one also ``FINISH_REASON`` and ``TOKENS``.
"""
from __future__ import annotations

import http.client
import json
import queue
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import trtserve_contract as contract
from tritonclient.utils import InferenceServerException

from .errors import BadInputError, InferenceError, RequestTimeoutError, TrtServeError, error_class_for_status

__all__ = ["GenerationOptions", "GenerationResult", "GenerationStream", "grpc_events", "http_events"]


@dataclass(frozen=True)
class GenerationOptions:
    """Optional settings; ``None`` leaves the server's default (greedy, the model's MAX_NEW_TOKENS)."""

    max_new_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: Sequence[str] = ()

    def fields(self) -> dict[str, object]:
        """Input name -> value for the inputs that are set."""
        values = {contract.MAX_NEW_TOKENS: self.max_new_tokens, contract.TEMPERATURE: self.temperature,
                  contract.TOP_P: self.top_p, contract.SEED: self.seed}
        out = {k: v for k, v in values.items() if v is not None}
        if self.stop:
            out[contract.STOP] = list(self.stop)
        return out

    def tensors(self, prompt: str) -> list[tuple[str, np.ndarray, str]]:
        """(name, [1, n] array, Triton datatype) for the prompt and every set option."""
        kinds = {contract.MAX_NEW_TOKENS: (np.int32, "INT32"), contract.TEMPERATURE: (np.float32, "FP32"),
                 contract.TOP_P: (np.float32, "FP32"), contract.SEED: (np.int64, "INT64")}
        out = [(contract.PROMPT, np.array([[prompt.encode("utf-8")]], dtype=np.object_), "BYTES")]
        for name, value in self.fields().items():
            if name == contract.STOP:
                out.append((name, np.array([[s.encode("utf-8") for s in value]], dtype=np.object_), "BYTES"))
            else:
                dtype, triton = kinds[name]
                out.append((name, np.array([[value]], dtype=dtype), triton))
        return out


@dataclass(frozen=True)
class GenerationResult:
    text: str
    finish_reason: str
    tokens: int


@dataclass
class GenerationStream:
    """An iterator of text pieces as they arrive; after it ends, ``finish_reason``, ``tokens``,
    ``text`` and the timing (``first_piece_s``: time to the first piece) are set."""

    events: Iterator[dict]
    started: float = field(default_factory=time.perf_counter)
    pieces: list[str] = field(default_factory=list)
    finish_reason: str | None = None
    tokens: int | None = None
    first_piece_s: float | None = None
    total_s: float | None = None

    def __iter__(self) -> "GenerationStream":
        return self

    def __next__(self) -> str:
        while self.finish_reason is None:
            event = next(self.events, None)
            if event is None:
                raise InferenceError("the stream ended without a final response")
            piece = _as_str(event.get(contract.TEXT, ""))
            if contract.FINISH_REASON in event:
                self.finish_reason = _as_str(event[contract.FINISH_REASON])
                self.tokens = int(np.asarray(event[contract.TOKENS]).reshape(-1)[0])
                self.total_s = time.perf_counter() - self.started
            if piece:
                if self.first_piece_s is None:
                    self.first_piece_s = time.perf_counter() - self.started
                self.pieces.append(piece)
                return piece
        raise StopIteration

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    def result(self) -> GenerationResult:
        for _ in self:
            pass
        return GenerationResult(self.text, self.finish_reason, self.tokens)

    def close(self) -> None:
        close = getattr(self.events, "close", None)
        if close is not None:
            close()


def _as_str(value) -> str:
    value = np.asarray(value, dtype=object).reshape(-1)[0] if not isinstance(value, (str, bytes)) else value
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def grpc_events(grpc_client, module, model: str, prompt: str, options: GenerationOptions,
                timeout_s: float) -> Iterator[dict]:
    """Responses of one request over the gRPC stream of ``grpc_client`` (tritonclient.grpc)."""
    responses: queue.Queue = queue.Queue()
    grpc_client.start_stream(callback=lambda result, error: responses.put((result, error)))
    try:
        inputs = []
        for name, array, datatype in options.tensors(prompt):
            tensor = module.InferInput(name, list(array.shape), datatype)
            tensor.set_data_from_numpy(array)
            inputs.append(tensor)
        grpc_client.async_stream_infer(model, inputs)
        while True:
            try:
                result, error = responses.get(timeout=timeout_s)
            except queue.Empty:
                raise RequestTimeoutError(f"model {model!r}: no streamed response in {timeout_s:g}s") from None
            if error is not None:
                raise _stream_error(error, model)
            response = result.get_response()
            event = {o.name: result.as_numpy(o.name) for o in response.outputs}
            yield event
            if contract.FINISH_REASON in event:
                return
    finally:
        grpc_client.stop_stream()


def http_events(url: str, model: str, prompt: str, options: GenerationOptions, timeout_s: float,
                stream: bool = True) -> Iterator[dict]:
    """Responses from Triton's ``generate_stream`` (SSE) or ``generate`` endpoint over HTTP."""
    host, _, port = url.rpartition(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout_s)
    try:
        # /generate needs exactly one response: "stream": false (a request parameter) asks for it
        body = json.dumps({contract.PROMPT: prompt, **options.fields(), **({} if stream else {"stream": False})})
        endpoint = "generate_stream" if stream else "generate"
        conn.request("POST", f"/v2/models/{model}/{endpoint}", body=body, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        if response.status != 200:
            raise _http_error(response.status, response.read().decode("utf-8", "replace"), model)
        if not stream:
            yield json.loads(response.read())
            return
        for raw in response:
            line = raw.decode("utf-8").strip()
            if not line.startswith("data:"):
                continue
            event = json.loads(line[len("data:"):])
            if "error" in event:
                raise _http_error(400, json.dumps(event), model)
            yield event
            if contract.FINISH_REASON in event:
                return
    finally:
        conn.close()


# Errors inside a gRPC stream carry only a message (no status code): the generate model's own
# input errors name the input they are about; Triton's name an unexpected input or datatype.
_STREAM_BAD_INPUT = re.compile(
    r"^(%s)\b|unexpected inference input|unexpected datatype|unexpected shape|expected .* inputs? but got"
    % "|".join((contract.PROMPT, *contract.GENERATE_OPTIONAL_INPUTS)), re.IGNORECASE)


def _stream_error(error: BaseException, model: str) -> BaseException:
    status = error.status() if isinstance(error, InferenceServerException) else None
    if status is None and isinstance(error, InferenceServerException):
        message = error.message() or str(error)
        cls = BadInputError if _STREAM_BAD_INPUT.search(message) else error_class_for_status(None, message)
        return cls(f"model {model!r}: {message}")
    return error


def _http_error(status: int, body: str, model: str) -> TrtServeError:
    try:
        message = json.loads(body).get("error", body)
    except (json.JSONDecodeError, AttributeError):
        message = body
    cls = error_class_for_status(str(status), message)
    if cls is InferenceError and status == 400:
        cls = BadInputError
    return cls(f"model {model!r}: [{status}] {message}", status=str(status))
