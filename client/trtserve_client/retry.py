"""Retrying requests the server turned away: exponential backoff, full jitter, one deadline.

A server with bounded queues (``[batching] max_queue_size`` / ``queue_timeout_microseconds``)
answers overload at once with UNAVAILABLE instead of letting requests pile up; the client is
expected to come back later. :class:`RetryPolicy` says when and how often:

- only errors that are safe and useful to repeat are retried (:func:`is_retryable`): the
  server refused the work (queue full, or the request timed out *in the server's queue*, so it
  never ran), the server could not be reached / was restarting, or the model was down (a dead
  or stopped Python stub, a model unloaded for reload or loading: what the supervisor of
  `trtserve-server serve` restores within seconds). Bad input, unknown models,
  backend failures and the client's own timeout are not retried: the first three will fail
  again, and a client-side timeout means the server may still be working on the request, so
  repeating it would add load exactly when there is too much;
- the wait before attempt ``n`` (``n = 1`` is the first retry) is drawn uniformly from
  ``[0, min(max_backoff_s, initial_backoff_s * multiplier ** (n - 1))]`` ("full jitter"), so
  many clients rejected at the same moment do not come back in lockstep;
- ``deadline_s`` bounds the whole call: no retry is started (and no sleep goes) past it. An
  attempt that starts before the deadline can still take up to the client's ``timeout_s``.

Retries are off unless asked for: ``TrtServeClient(retry=RetryPolicy())``. Load tests and the
overload benchmark use no retries, so that they see what the server really does.
"""
from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from .errors import (
    ModelNotFoundError,
    ModelNotReadyError,
    RequestTimeoutError,
    ServerOverloadedError,
    ServerUnavailableError,
    TrtServeError,
)

__all__ = ["RetryPolicy", "is_retryable", "call_with_retry"]

T = TypeVar("T")

# Status codes with which the *server* reports a request it did not run (its queue timeout).
# A client-side deadline is DEADLINE_EXCEEDED (gRPC) or a socket timeout (HTTP, status None).
_SERVER_REFUSED_STATUSES = ("StatusCode.UNAVAILABLE", "UNAVAILABLE", "503")


def is_retryable(error: TrtServeError) -> bool:
    """Whether repeating the request later can succeed without adding load to a busy server."""
    if isinstance(error, ServerOverloadedError | ServerUnavailableError):
        return True
    if isinstance(error, RequestTimeoutError):
        return error.status in _SERVER_REFUSED_STATUSES  # the server's queue timeout, not ours
    if isinstance(error, ModelNotReadyError) and not isinstance(error, ModelNotFoundError):
        return True  # loading or reloading; it will be back
    return False


@dataclass(frozen=True)
class RetryPolicy:
    """How :class:`~trtserve_client.TrtServeClient` retries refused requests.

    ``max_attempts`` counts the first try (``1`` disables retries); ``deadline_s`` bounds the
    total time from the first attempt; waits grow from ``initial_backoff_s`` by ``multiplier``
    up to ``max_backoff_s`` and are fully jittered. ``retry_if`` decides which errors are
    retried (default :func:`is_retryable`). ``sleep``, ``clock`` and ``rng`` are for tests.
    """

    max_attempts: int = 8
    deadline_s: float = 10.0
    initial_backoff_s: float = 0.05
    max_backoff_s: float = 2.0
    multiplier: float = 2.0
    retry_if: Callable[[TrtServeError], bool] = is_retryable
    sleep: Callable[[float], None] = field(default=time.sleep, repr=False, compare=False)
    clock: Callable[[], float] = field(default=time.monotonic, repr=False, compare=False)
    rng: random.Random = field(default_factory=random.Random, repr=False, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.max_attempts, bool) or not isinstance(self.max_attempts, int) or self.max_attempts < 1:
            raise ValueError(f"max_attempts must be an int >= 1, got {self.max_attempts!r}")
        if not self.deadline_s > 0:
            raise ValueError(f"deadline_s must be > 0, got {self.deadline_s!r}")
        if not 0 < self.initial_backoff_s <= self.max_backoff_s:
            raise ValueError(
                f"need 0 < initial_backoff_s <= max_backoff_s, got {self.initial_backoff_s!r}, {self.max_backoff_s!r}"
            )
        if not self.multiplier >= 1:
            raise ValueError(f"multiplier must be >= 1, got {self.multiplier!r}")

    @classmethod
    def through_recovery(cls, deadline_s: float = 30.0) -> "RetryPolicy":
        """A policy that rides out a server restoring itself: a model reload (about 2 s) or a
        tritonserver restart (up to 15 s) under the supervisor of ``trtserve-server serve``.
        Waits stay short (at most 1 s) so the first answer after recovery is not waited out."""
        return cls(max_attempts=200, deadline_s=deadline_s, initial_backoff_s=0.05, max_backoff_s=1.0)

    def backoff_cap(self, retry_number: int) -> float:
        """The upper bound of the wait before retry ``retry_number`` (1-based)."""
        return min(self.max_backoff_s, self.initial_backoff_s * self.multiplier ** (retry_number - 1))

    def backoff(self, retry_number: int) -> float:
        """A full-jitter wait before retry ``retry_number``: uniform in ``[0, backoff_cap]``."""
        return self.rng.uniform(0.0, self.backoff_cap(retry_number))


def call_with_retry(policy: RetryPolicy | None, attempt: Callable[[], T]) -> T:
    """Run ``attempt`` until it succeeds, raises a non-retryable error, runs out of attempts,
    or the next wait would end past the deadline; then the last error is raised with the
    number of attempts and the time spent added to its message (the original as its cause)."""
    if policy is None:
        return attempt()
    start = policy.clock()
    deadline = start + policy.deadline_s
    tries = 0
    while True:
        tries += 1
        try:
            return attempt()
        except TrtServeError as error:
            if not policy.retry_if(error):
                raise
            wait = policy.backoff(tries)
            out_of_attempts = tries >= policy.max_attempts
            out_of_time = policy.clock() + wait >= deadline
            if out_of_attempts or out_of_time:
                why = f"{policy.max_attempts} attempts" if out_of_attempts else f"deadline_s={policy.deadline_s:g}"
                raise type(error)(
                    f"{error} (gave up after {tries} attempt(s) in {policy.clock() - start:.2f}s: {why})",
                    status=error.status,
                ) from error
            policy.sleep(wait)
