"""One small adapter per protocol over tritonclient, with the same four calls.

The adapters only move tensors; they do not translate errors (the client does, in one place)
and they import their tritonclient module lazily, so a gRPC user never imports gevent.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np

__all__ = ["Transport", "GrpcTransport", "HttpTransport", "make_transport", "PROTOCOLS", "DEFAULT_URLS"]

PROTOCOLS = ("grpc", "http")
DEFAULT_URLS = {"grpc": "127.0.0.1:8001", "http": "127.0.0.1:8000"}
_BYTES = "BYTES"


class Transport(Protocol):
    def is_live(self) -> bool: ...

    def model_config(self, model: str) -> dict[str, Any]: ...

    def infer(
        self, model: str, inputs: Mapping[str, np.ndarray], outputs: Sequence[str] | None
    ) -> dict[str, np.ndarray | None]: ...

    def close(self) -> None: ...


def grpc_channel_args() -> list[tuple[str, object]]:
    """tritonclient's own channel options, plus a reconnect backoff capped at 1 s: gRPC's
    default grows to 120 s, which keeps a retrying client away from a server that restarted
    (a supervised tritonserver is back within seconds)."""
    from tritonclient.grpc import KeepAliveOptions
    from tritonclient.grpc._client import MAX_GRPC_MESSAGE_SIZE

    keepalive = KeepAliveOptions()
    return [
        ("grpc.max_send_message_length", MAX_GRPC_MESSAGE_SIZE),
        ("grpc.max_receive_message_length", MAX_GRPC_MESSAGE_SIZE),
        ("grpc.keepalive_time_ms", keepalive.keepalive_time_ms),
        ("grpc.keepalive_timeout_ms", keepalive.keepalive_timeout_ms),
        ("grpc.keepalive_permit_without_calls", keepalive.keepalive_permit_without_calls),
        ("grpc.http2.max_pings_without_data", keepalive.http2_max_pings_without_data),
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.min_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 1000),
    ]


class GrpcTransport:
    """tritonclient.grpc; every call carries ``client_timeout`` (a gRPC deadline)."""

    def __init__(self, url: str, timeout_s: float) -> None:
        import tritonclient.grpc as grpcclient

        self._module = grpcclient
        self._timeout_s = timeout_s
        self._client = grpcclient.InferenceServerClient(url, channel_args=grpc_channel_args())

    def is_live(self) -> bool:
        return bool(self._client.is_server_live(client_timeout=self._timeout_s))

    def model_config(self, model: str) -> dict[str, Any]:
        response = self._client.get_model_config(model, as_json=True, client_timeout=self._timeout_s)
        return response["config"]

    def infer(self, model, inputs, outputs):
        tensors = []
        for name, array in inputs.items():
            tensor = self._module.InferInput(name, list(array.shape), _BYTES)
            tensor.set_data_from_numpy(array)
            tensors.append(tensor)
        requested = [self._module.InferRequestedOutput(name) for name in outputs] if outputs else None
        result = self._client.infer(
            model, tensors, outputs=requested, client_timeout=self._timeout_s
        )
        return {name: result.as_numpy(name) for name in outputs or ()}

    def close(self) -> None:
        self._client.close()


class HttpTransport:
    """tritonclient.http; timeouts are the connection's (connect and per-socket-operation)."""

    def __init__(self, url: str, timeout_s: float) -> None:
        import tritonclient.http as httpclient

        self._module = httpclient
        self._client = httpclient.InferenceServerClient(
            url, connection_timeout=timeout_s, network_timeout=timeout_s
        )

    def is_live(self) -> bool:
        return bool(self._client.is_server_live())

    def model_config(self, model: str) -> dict[str, Any]:
        return self._client.get_model_config(model)

    def infer(self, model, inputs, outputs):
        tensors = []
        for name, array in inputs.items():
            tensor = self._module.InferInput(name, list(array.shape), _BYTES)
            # Binary tensor data: bytes go through as they are (JSON would need valid UTF-8).
            tensor.set_data_from_numpy(array, binary_data=True)
            tensors.append(tensor)
        requested = (
            [self._module.InferRequestedOutput(name, binary_data=True) for name in outputs]
            if outputs
            else None
        )
        result = self._client.infer(model, tensors, outputs=requested)
        return {name: result.as_numpy(name) for name in outputs or ()}

    def close(self) -> None:
        self._client.close()


def make_transport(protocol: str, url: str, timeout_s: float) -> Transport:
    if protocol == "grpc":
        return GrpcTransport(url, timeout_s)
    if protocol == "http":
        return HttpTransport(url, timeout_s)
    raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
