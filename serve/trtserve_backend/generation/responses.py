"""A Triton decoupled response sender as the scheduler's :class:`~.scheduler.StreamSink`.

Every streamed response carries ``TEXT`` [1, 1]; the last one also ``FINISH_REASON`` and
``TOKENS`` and the final flag. ``pb`` is ``triton_python_backend_utils`` (passed in, so the
logic is unit-tested with a stand-in outside the server).
"""
from __future__ import annotations

import numpy as np

from .. import contract


def triton_error(pb, message: str, code: str):
    """A TritonError with ``code`` (INVALID_ARG, UNAVAILABLE, CANCELLED ...) where the backend has it."""
    value = getattr(pb.TritonError, code, None)
    return pb.TritonError(message, value) if value is not None else pb.TritonError(message)


class ResponseSink:
    def __init__(self, pb, request, dtypes: dict[str, object]):
        self.pb = pb
        self.request = request
        self.sender = request.get_response_sender()
        self.dtypes = dtypes
        self.closed = False

    def _tensor(self, name: str, value) -> object:
        dtype = self.dtypes[name]
        if dtype == np.object_:
            value = value.encode("utf-8")
        return self.pb.Tensor(name, np.array([[value]], dtype=dtype))

    def send(self, text: str) -> None:
        self.sender.send(self.pb.InferenceResponse([self._tensor(contract.TEXT, text)]))

    def finish(self, text: str, reason: str, tokens: int) -> None:
        response = self.pb.InferenceResponse([
            self._tensor(contract.TEXT, text),
            self._tensor(contract.FINISH_REASON, reason),
            self._tensor(contract.TOKENS, tokens),
        ])
        self._final(response)

    def fail(self, message: str, code: str = "INTERNAL") -> None:
        self._final(self.pb.InferenceResponse(error=triton_error(self.pb, message, code)))

    def cancelled(self) -> bool:
        for owner in (self.sender, self.request):
            check = getattr(owner, "is_cancelled", None)
            if check is not None and check():
                return True
        return False

    def _final(self, response) -> None:
        if self.closed:
            return
        self.closed = True
        self.sender.send(response, flags=self.pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
