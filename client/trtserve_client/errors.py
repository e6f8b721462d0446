"""Typed client errors, and the translation of tritonclient/transport failures into them.

Callers catch these instead of tritonclient's single ``InferenceServerException``, so that
"the server is down", "the server is busy, retry", "the request took too long" and "your input
is wrong" are distinguishable without parsing messages. Every translated error keeps the
original as ``__cause__`` (``raise translate_error(e) from e``).

Where the status codes come from (Triton 2.5x server/core sources). Triton error code ->
gRPC status / HTTP code, with typical messages:

- INVALID_ARG -> ``StatusCode.INVALID_ARGUMENT`` / ``400``: "[request id: <id_unknown>]
  inference request batch-size must be <= 64 for 'sentiment'", "unexpected inference output
  'LABEL' for model 'embed'"; newer cores also report an unknown model name this way
- NOT_FOUND -> ``StatusCode.NOT_FOUND`` / ``404``: "Request for unknown model: 'x' is not found"
  (2.51), "Request for unknown model: 'x' has no available versions" (known, not loaded)
- UNAVAILABLE -> ``StatusCode.UNAVAILABLE`` / ``503``: "Exceeds maximum queue size", "Request
  timeout expired", "'x' version 1 is not at ready state", "Server not ready"
- INTERNAL -> ``StatusCode.INTERNAL`` / ``500``: backend failures, e.g. a Python stub exception;
  a dead or stopped stub ("Stub process 'x_0_0' is not healthy.") is a model that is down:
  :class:`ModelNotReadyError`, retryable
- UNSUPPORTED -> ``StatusCode.UNIMPLEMENTED`` / ``501``; UNKNOWN, CANCELLED, ... -> ``400``

tritonclient.grpc reports transport failures with the same ``StatusCode.UNAVAILABLE`` (message
"failed to connect to all addresses; ...") and ``client_timeout`` as
``StatusCode.DEADLINE_EXCEEDED``; tritonclient.http lets socket errors through unchanged
(``ConnectionRefusedError``, ``TimeoutError`` from the network timeout, ...). tritonclient's
client-side validation errors carry ``status=None``. Because one code covers several cases,
:func:`error_class_for_status` looks at the message first and the code second.
"""
from __future__ import annotations

import http.client
import re
import socket
import sys
from typing import ClassVar

from tritonclient.utils import InferenceServerException

__all__ = [
    "TrtServeError",
    "ServerUnavailableError",
    "ModelNotReadyError",
    "ModelNotFoundError",
    "BadInputError",
    "RequestTimeoutError",
    "ServerOverloadedError",
    "InferenceError",
    "translate_error",
    "error_class_for_status",
    "TRANSPORT_EXCEPTIONS",
]


class TrtServeError(Exception):
    """Base of every error this client raises.

    ``status`` is the original status string when there was one (gRPC ``"StatusCode.X"`` or an
    HTTP code like ``"503"``); ``retryable`` says whether sending the same request again later
    can succeed.
    """

    retryable: ClassVar[bool] = False

    def __init__(self, message: str, *, status: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status

    def __str__(self) -> str:
        return self.message


class ServerUnavailableError(TrtServeError):
    """The server cannot be reached (connection refused/reset, DNS) or is shutting down."""

    retryable = True


class ModelNotReadyError(TrtServeError):
    """The model exists in the repository but no version is ready (loading, failed, unloaded),
    or its backend process died and is being restored."""

    retryable = True


class ModelNotFoundError(ModelNotReadyError):
    """The server does not know the model name at all.

    A subclass of :class:`ModelNotReadyError` so ``except ModelNotReadyError`` covers both, while
    "unknown model" stays distinguishable. Not retryable: a typo stays a typo.
    """

    retryable = False


class BadInputError(TrtServeError):
    """The request was rejected as invalid: wrong input, bad UTF-8, batch too large, ...

    Also raised by the client itself, before sending, for inputs it can already see are wrong.
    """


class RequestTimeoutError(TrtServeError):
    """No answer within the client timeout, or the server's queue timeout expired."""

    retryable = True


class ServerOverloadedError(TrtServeError):
    """The server rejected the request for lack of capacity (queue full, out of memory)."""

    retryable = True


class InferenceError(TrtServeError):
    """Any other server-side failure (backend error, unexpected response, ...)."""


# Low-level exceptions the transports let through (besides InferenceServerException):
# socket errors and timeouts (OSError covers ConnectionError, TimeoutError, socket.gaierror),
# geventhttpclient's parse/closed errors (http.client.HTTPException subclasses). grpc.RpcError
# is added below when grpc is importable.
TRANSPORT_EXCEPTIONS: tuple[type[BaseException], ...] = (
    InferenceServerException,
    OSError,
    http.client.HTTPException,
)
try:  # grpc ships with tritonclient[grpc]; the http-only install has no grpc.
    import grpc as _grpc

    TRANSPORT_EXCEPTIONS += (_grpc.RpcError,)
except ImportError:  # pragma: no cover
    _grpc = None


def _any(patterns: tuple[str, ...]) -> re.Pattern[str]:
    return re.compile("|".join(patterns), re.IGNORECASE)


# Message patterns, checked before the status code because Triton reuses one code for
# several situations (UNAVAILABLE is queue-full, model-not-ready and server-down alike).
_UNKNOWN_MODEL = _any((r"unknown model.*\bis not found",))
_MODEL_NOT_READY = _any((
    r"unknown model",  # "... has no available versions", "... is not at ready state"
    r"is not at ready state",
    r"has no available versions",
    r"model .* is not ready",
))
# A model whose backend process died or was stopped: Triton 2.5x answers INTERNAL "Stub
# process '<instance>' is not healthy." until the model is reloaded (the supervisor of
# `trtserve-server serve` does that within seconds), then UNAVAILABLE while it loads. The
# request did not run: it is a model that is down, as retryable as one that is loading.
_MODEL_DOWN = _any((
    r"stub process .*is not healthy",
    r"stub process is not healthy",
    r"failed to (?:process the request|get response).*stub",
))
_OVERLOADED = _any((
    r"exceeds maximum queue size",
    r"queue is full",
    r"memory allocation failed",
    r"resource exhausted",
    r"too many (requests|pending)",
))
_SERVER_TIMEOUT = _any((r"request timeout expired", r"deadline exceeded", r"timed out"))
_SERVER_DOWN = _any((
    # Triton itself, while starting or stopping.
    r"server not ready", r"server exiting", r"server is stopping", r"shutting down",
    r"server is not running",
    # gRPC core transport failures (all surface as StatusCode.UNAVAILABLE).
    r"failed to connect", r"connection refused", r"connection reset", r"socket closed",
    r"broken pipe", r"dns resolution failed", r"name resolution", r"goaway",
    r"keepalive", r"connections to all backends failing", r"empty address list",
    r"endpoint (read|write) failed", r"transport closed", r"connection closed",
    r"network is unreachable", r"no route to host", r"cannot resolve",
    r"upstream connect error", r"no healthy upstream",
))
# Invalid input discovered inside a backend (e.g. the Python tokenizer's UnicodeDecodeError),
# which Triton reports as INTERNAL.
_BAD_TEXT = _any((r"utf-?8", r"unicodedecodeerror", r"can't decode", r"invalid continuation byte"))
# tritonclient's own client-side validation (status None).
_CLIENT_SIDE_BAD_INPUT = _any((
    r"unexpected numpy array shape", r"unexpected datatype", r"must be a numpy array",
    r"failed to encode", r"dtype must be np\.object_", r"model version must be a string",
    r"reserved parameter", r"parameter datatype", r"url should not include the scheme",
    r"invalid datatype", r"larger than max",
))

_GRPC_PREFIX = "StatusCode."


def _normalise_status(status: str | None) -> str | None:
    """``"StatusCode.UNAVAILABLE"`` -> ``"UNAVAILABLE"``; ``"503"`` stays; ``None`` stays."""
    if status is None:
        return None
    status = str(status).strip()
    return status[len(_GRPC_PREFIX):] if status.startswith(_GRPC_PREFIX) else status


def error_class_for_status(status: str | None, message: str) -> type[TrtServeError]:
    """Pick the error class for a server/transport status and its message.

    ``status`` is what ``InferenceServerException.status()`` returns: ``"StatusCode.<NAME>"``
    from tritonclient.grpc, the HTTP code as a string (``"400"``) from tritonclient.http, or
    ``None`` for tritonclient's client-side checks. Pure; the table is in the module docstring.
    """
    code = _normalise_status(status)
    message = message or ""

    if _UNKNOWN_MODEL.search(message):
        return ModelNotFoundError
    if _MODEL_NOT_READY.search(message) or _MODEL_DOWN.search(message):
        return ModelNotReadyError
    if _OVERLOADED.search(message):
        return ServerOverloadedError

    if code is None:
        if _SERVER_DOWN.search(message):
            return ServerUnavailableError
        if _CLIENT_SIDE_BAD_INPUT.search(message):
            return BadInputError
        return InferenceError

    if code in ("DEADLINE_EXCEEDED", "408", "504"):
        return RequestTimeoutError
    if code in ("UNAVAILABLE", "503"):
        if _SERVER_TIMEOUT.search(message):
            return RequestTimeoutError
        if _SERVER_DOWN.search(message):
            return ServerUnavailableError
        # Any other "unavailable" is the server refusing work it has no capacity for.
        return ServerOverloadedError
    if code in ("RESOURCE_EXHAUSTED", "429"):
        # gRPC's own message-size limit is a bad (too large) input; anything else is capacity.
        return BadInputError if _CLIENT_SIDE_BAD_INPUT.search(message) else ServerOverloadedError
    if code in ("INVALID_ARGUMENT", "OUT_OF_RANGE", "FAILED_PRECONDITION", "400", "413", "422"):
        return BadInputError
    if code in ("NOT_FOUND", "404"):
        return ModelNotFoundError
    if _BAD_TEXT.search(message):
        return BadInputError
    if code == "CANCELLED" and _SERVER_DOWN.search(message):
        return ServerUnavailableError
    return InferenceError


def translate_error(exc: BaseException, *, context: str | None = None) -> TrtServeError:
    """Map a tritonclient, gRPC or socket exception to a :class:`TrtServeError`.

    Returns the new error (it does not raise), so the caller writes
    ``raise translate_error(e) from e`` and keeps the original as the cause. ``context`` (for
    example ``"model 'sentiment' at 127.0.0.1:8001 (grpc)"``) prefixes the message. A
    :class:`TrtServeError` is returned unchanged.
    """
    if isinstance(exc, TrtServeError):
        return exc

    def make(cls: type[TrtServeError], text: str, status: str | None = None) -> TrtServeError:
        text = " ".join(str(text).split())  # one line, whatever the server sent
        return cls(f"{context}: {text}" if context else text, status=status)

    if isinstance(exc, InferenceServerException):
        status = exc.status()
        message = exc.message() or ""
        shown = f"[{status}] {message}" if status else message
        return make(error_class_for_status(status, message), shown, status)

    if _grpc is not None and isinstance(exc, _grpc.RpcError):
        # tritonclient converts these, but a raw one can escape (streams, custom channels).
        code = exc.code() if hasattr(exc, "code") else None
        details = (exc.details() if hasattr(exc, "details") else None) or str(exc)
        status = str(code) if code is not None else None
        return make(error_class_for_status(status, details), f"[{status}] {details}", status)

    # TimeoutError is an OSError; check it first. gevent.Timeout is a BaseException.
    gevent = sys.modules.get("gevent")
    gevent_timeout = (gevent.Timeout,) if gevent is not None else ()
    if isinstance(exc, (TimeoutError, socket.timeout, *gevent_timeout)):
        return make(RequestTimeoutError, f"no response in time ({type(exc).__name__}: {exc})")
    if isinstance(exc, (ConnectionError, socket.gaierror)):
        return make(ServerUnavailableError, f"cannot reach the server: {exc!s} ({type(exc).__name__})")
    if isinstance(exc, OSError):
        return make(ServerUnavailableError, f"network error: {exc!s} ({type(exc).__name__})")
    if isinstance(exc, http.client.HTTPException):
        # geventhttpclient's HTTPConnectionClosed / HTTPParseError: the connection dropped.
        return make(ServerUnavailableError, f"connection lost: {exc!s} ({type(exc).__name__})")
    if isinstance(exc, RuntimeError) and _SERVER_DOWN.search(str(exc)):
        return make(ServerUnavailableError, str(exc))
    return make(InferenceError, f"{type(exc).__name__}: {exc}")
