"""A Triton decoupled response sender as the scheduler's :class:`~.scheduler.StreamSink`.

Every streamed response carries ``TEXT`` [1, 1]; the last one also ``FINISH_REASON`` and
``TOKENS`` and the final flag. A request with the parameter ``"stream": false`` gets exactly one
response holding the whole text (Triton's HTTP ``/generate`` endpoint requires one response;
``generate_stream`` and gRPC streams take the pieces as they come). ``pb`` is ``triton_python_backend_utils`` (passed in, so the
logic is unit-tested with a stand-in outside the server).
"""
from __future__ import annotations

import json

import numpy as np

import trtserve_contract as contract


def triton_error(pb, message: str, code: str):
    """A TritonError with ``code`` (INVALID_ARG, UNAVAILABLE, CANCELLED ...) where the backend has it."""
    value = getattr(pb.TritonError, code, None)
    return pb.TritonError(message, value) if value is not None else pb.TritonError(message)


def wants_stream(request) -> bool:
    """False only when the request carries the parameter ``stream`` = false."""
    read = getattr(request, "parameters", None)
    if read is None:
        return True
    try:
        value = json.loads(read() or "{}").get("stream", True)
    except (ValueError, AttributeError):
        return True
    return not (value is False or str(value).lower() in ("false", "0"))


class ResponseSink:
    def __init__(self, pb, request, dtypes: dict[str, object]):
        self.pb = pb
        self.request = request
        self.sender = request.get_response_sender()
        self.dtypes = dtypes
        self.closed = False
        self.stream = wants_stream(request)
        self.buffered: list[str] = []

    def _tensor(self, name: str, value) -> object:
        dtype = self.dtypes[name]
        if dtype == np.object_:
            value = value.encode("utf-8")
        return self.pb.Tensor(name, np.array([[value]], dtype=dtype))

    def send(self, text: str) -> None:
        if not self.stream:
            self.buffered.append(text)
            return
        self.sender.send(self.pb.InferenceResponse([self._tensor(contract.TEXT, text)]))

    def finish(self, text: str, reason: str, tokens: int) -> None:
        response = self.pb.InferenceResponse([
            self._tensor(contract.TEXT, "".join(self.buffered) + text),
            self._tensor(contract.FINISH_REASON, reason),
            self._tensor(contract.TOKENS, tokens),
        ])
        self._final(response)

    def fail(self, message: str, code: str = "INTERNAL") -> None:
        self._final(self.pb.InferenceResponse(error=triton_error(self.pb, message, code)))

    def cancelled(self) -> bool:
        """Asks the server (a round trip): the sender's flag where it has one, else the request's
        (under Triton both read the same cancellation state, so one question is enough)."""
        for owner in (self.sender, self.request):
            check = getattr(owner, "is_cancelled", None)
            if check is not None:
                return bool(check())
        return False

    def _final(self, response) -> None:
        if self.closed:
            return
        self.closed = True
        self.sender.send(response, flags=self.pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
