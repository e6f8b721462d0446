"""Real inferences through the client contract, and what their failures mean to a supervisor.

A probe sends one short text to a deployment with :class:`~trtserve_client.TrtServeClient`
(``classify``, ``embed``, ``answer`` or ``entities``, by the deployment's task), exactly as a
user would, with a short timeout and no retries, and checks the answer against the contract.
"""
from __future__ import annotations

import enum
import time
from dataclasses import dataclass

from trtserve_client import TrtServeClient
from trtserve_client.errors import (
    ModelNotReadyError,
    RequestTimeoutError,
    ServerOverloadedError,
    ServerUnavailableError,
    TrtServeError,
)
from trtserve_client.retry import is_retryable

import trtserve_contract as contract

from .deployments import Deployment

__all__ = ["Outcome", "ProbeResult", "Prober", "outcome_of", "PROBE_TEXT"]

PROBE_TEXT = "trtserve supervisor probe"
PROBE_QUESTION = "what is this?"


class Outcome(enum.Enum):
    OK = "ok"
    BUSY = "busy"  # the server turned the probe away for lack of capacity: not a fault
    TIMEOUT = "timeout"  # no answer within the probe timeout: hung, or very busy
    DOWN = "down"  # the server cannot be reached
    FAILED = "failed"  # the deployment answered with an error: a model is broken


def outcome_of(error: TrtServeError) -> Outcome:
    """What a probe's error says about the server."""
    if isinstance(error, ServerOverloadedError):
        return Outcome.BUSY
    if isinstance(error, RequestTimeoutError):
        # the server's own queue timeout (UNAVAILABLE) means busy; our deadline means no answer
        return Outcome.BUSY if is_retryable(error) else Outcome.TIMEOUT
    if isinstance(error, ServerUnavailableError):
        return Outcome.DOWN
    if isinstance(error, ModelNotReadyError):
        return Outcome.FAILED
    return Outcome.FAILED


@dataclass(frozen=True)
class ProbeResult:
    deployment: str
    outcome: Outcome
    seconds: float
    error: TrtServeError | None = None

    @property
    def ok(self) -> bool:
        return self.outcome is Outcome.OK

    def describe(self) -> str:
        if self.ok:
            return f"{self.deployment}: ok in {self.seconds * 1000:.0f} ms"
        return f"{self.deployment}: {self.outcome.value} after {self.seconds:.2f}s ({self.error})"


class Prober:
    """One client per server start, over HTTP: a probe that times out must not cancel a gRPC
    call, because on Triton 2.51 cancelled gRPC calls can crash the server (README, "Load tests
    and overload"); an HTTP client that gives up only closes its connection."""

    def __init__(self, url: str, timeout_s: float) -> None:
        self.url = url
        self.timeout_s = timeout_s
        self._client = TrtServeClient(url, protocol="http", timeout_s=timeout_s)

    def probe(self, deployment: Deployment, timeout_s: float | None = None) -> ProbeResult:
        client = self._client
        if timeout_s is not None and timeout_s != self.timeout_s:
            client = TrtServeClient(self.url, protocol="http", timeout_s=timeout_s)
        start = time.monotonic()
        try:
            _ask(client, deployment)
            return ProbeResult(deployment.name, Outcome.OK, time.monotonic() - start)
        except TrtServeError as e:
            return ProbeResult(deployment.name, outcome_of(e), time.monotonic() - start, e)
        except ValueError as e:
            wrapped = TrtServeError(f"answer breaks the contract: {e}")
            return ProbeResult(deployment.name, Outcome.FAILED, time.monotonic() - start, wrapped)
        finally:
            if client is not self._client:
                client.close()

    def close(self) -> None:
        self._client.close()


def _ask(client: TrtServeClient, deployment: Deployment) -> None:
    """One request through ``deployment``'s contract; ValueError when the answer breaks it (the
    client itself checks shapes, and that an answer is the context's text at its offsets)."""
    if deployment.task == contract.CLASSIFICATION:
        kwargs = {"labels": deployment.labels} if deployment.labels else {}
        [result] = client.classify(PROBE_TEXT, model=deployment.name, **kwargs)
        if not 0.0 <= result.score <= 1.0:
            raise ValueError(f"score {result.score} outside [0, 1]")
    elif deployment.task == contract.QUESTION_ANSWERING:
        answer = client.answer(PROBE_QUESTION, PROBE_TEXT, model=deployment.name)
        if not 0.0 <= answer.score <= 1.0:
            raise ValueError(f"score {answer.score} outside [0, 1]")
    elif deployment.task == contract.TOKEN_CLASSIFICATION:
        [entities] = client.entities(PROBE_TEXT, model=deployment.name)
        if any(not 0.0 <= e.score <= 1.0 for e in entities):
            raise ValueError(f"entity score outside [0, 1]: {entities}")
    else:
        vectors = client.embed(PROBE_TEXT, model=deployment.name)
        if vectors.shape[0] != 1 or not vectors.size:
            raise ValueError(f"embedding of shape {vectors.shape}")
