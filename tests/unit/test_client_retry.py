"""RetryPolicy / call_with_retry: what is retried, full-jitter backoff, the deadline; no server."""
import random

import pytest

from trtserve_client import (
    BadInputError,
    InferenceError,
    ModelNotFoundError,
    ModelNotReadyError,
    RequestTimeoutError,
    RetryPolicy,
    ServerOverloadedError,
    ServerUnavailableError,
    TrtServeClient,
    call_with_retry,
    is_retryable,
)


class FakeClock:
    """A clock that only moves when the policy sleeps (or a test advances it)."""

    def __init__(self):
        self.now = 100.0
        self.sleeps = []

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        assert seconds >= 0
        self.sleeps.append(seconds)
        self.now += seconds


def policy(clock, **kw):
    kw.setdefault("rng", random.Random(7))
    return RetryPolicy(sleep=clock.sleep, clock=clock, **kw)


def failing(errors, result="ok"):
    """An attempt that raises each of ``errors`` in turn, then returns ``result``."""
    calls = []

    def attempt():
        calls.append(1)
        if len(calls) <= len(errors):
            raise errors[len(calls) - 1]
        return result

    attempt.calls = calls
    return attempt


@pytest.mark.parametrize("error, retryable", [
    (ServerOverloadedError("Exceeds maximum queue size", status="StatusCode.UNAVAILABLE"), True),
    (ServerUnavailableError("failed to connect", status="StatusCode.UNAVAILABLE"), True),
    (RequestTimeoutError("Request timeout expired", status="StatusCode.UNAVAILABLE"), True),
    (RequestTimeoutError("Request timeout expired", status="503"), True),
    (RequestTimeoutError("Deadline Exceeded", status="StatusCode.DEADLINE_EXCEEDED"), False),
    (RequestTimeoutError("no response in time (TimeoutError)"), False),
    (ModelNotReadyError("is not at ready state", status="StatusCode.UNAVAILABLE"), True),
    (ModelNotFoundError("unknown model", status="StatusCode.NOT_FOUND"), False),
    (BadInputError("batch-size must be <= 64", status="StatusCode.INVALID_ARGUMENT"), False),
    (InferenceError("python stub died", status="StatusCode.INTERNAL"), False),
])
def test_only_refused_work_is_retried(error, retryable):
    assert is_retryable(error) is retryable


def test_succeeds_after_overload_with_growing_jittered_waits():
    clock = FakeClock()
    p = policy(clock, initial_backoff_s=0.1, max_backoff_s=0.3, multiplier=2.0, max_attempts=10, deadline_s=60)
    errors = [ServerOverloadedError("queue full", status="503")] * 5
    attempt = failing(errors)
    assert call_with_retry(p, attempt) == "ok"
    assert len(attempt.calls) == 6
    caps = [p.backoff_cap(n) for n in range(1, 6)]
    assert caps == pytest.approx([0.1, 0.2, 0.3, 0.3, 0.3])
    assert len(clock.sleeps) == 5
    assert all(0 <= s <= c for s, c in zip(clock.sleeps, caps))


def test_full_jitter_spreads_waits_over_the_whole_range():
    p = RetryPolicy(initial_backoff_s=1.0, max_backoff_s=1.0, rng=random.Random(1))
    waits = [p.backoff(1) for _ in range(2000)]
    assert min(waits) < 0.05 and max(waits) > 0.95  # uniform on [0, cap], not cap +- a little
    assert 0.45 < sum(waits) / len(waits) < 0.55


def test_non_retryable_error_is_raised_at_once():
    clock = FakeClock()
    attempt = failing([BadInputError("bad", status="400")])
    with pytest.raises(BadInputError, match="bad"):
        call_with_retry(policy(clock), attempt)
    assert len(attempt.calls) == 1 and clock.sleeps == []


def test_gives_up_after_max_attempts_with_the_last_error_as_cause():
    clock = FakeClock()
    last = ServerOverloadedError("Exceeds maximum queue size", status="StatusCode.UNAVAILABLE")
    attempt = failing([last] * 10)
    with pytest.raises(ServerOverloadedError, match=r"gave up after 3 attempt\(s\).*3 attempts") as info:
        call_with_retry(policy(clock, max_attempts=3, deadline_s=60), attempt)
    assert info.value.__cause__ is last
    assert info.value.status == "StatusCode.UNAVAILABLE"
    assert len(attempt.calls) == 3 and len(clock.sleeps) == 2


def test_deadline_bounds_the_total_time():
    clock = FakeClock()
    p = policy(clock, max_attempts=1000, deadline_s=2.0, initial_backoff_s=0.2, max_backoff_s=0.5)
    attempt = failing([ServerUnavailableError("connection refused")] * 1000)
    with pytest.raises(ServerUnavailableError, match="deadline_s=2"):
        call_with_retry(p, attempt)
    assert sum(clock.sleeps) < 2.0  # never slept past the deadline
    assert len(attempt.calls) > 3


def test_no_policy_means_one_attempt():
    attempt = failing([ServerOverloadedError("queue full")])
    with pytest.raises(ServerOverloadedError):
        call_with_retry(None, attempt)
    assert len(attempt.calls) == 1


@pytest.mark.parametrize("kwargs", [
    {"max_attempts": 0}, {"max_attempts": True}, {"deadline_s": 0}, {"initial_backoff_s": 0},
    {"initial_backoff_s": 3.0, "max_backoff_s": 1.0}, {"multiplier": 0.5},
])
def test_invalid_policies_are_rejected(kwargs):
    with pytest.raises(ValueError):
        RetryPolicy(**kwargs)


class FakeTransport:
    """Rejects the first ``reject`` infer calls as a full queue, then echoes one row per text."""

    def __init__(self, reject):
        self.reject = reject
        self.calls = []

    def infer(self, model, inputs, outputs):
        from tritonclient.utils import InferenceServerException

        [text] = inputs.values()  # {"TEXT": [n, 1] BYTES}
        self.calls.append(text.shape[0])
        if len(self.calls) <= self.reject:
            raise InferenceServerException("[request id: <id_unknown>] Exceeds maximum queue size",
                                           status="StatusCode.UNAVAILABLE")
        import numpy as np

        return {name: np.zeros((text.shape[0], 4), dtype=np.float32) for name in outputs}

    def close(self):
        pass


def _client_with(transport, retry):
    client = TrtServeClient("127.0.0.1:1", protocol="grpc", max_batch_size=2, retry=retry)
    client._transport.close()
    client._transport = transport
    return client


def test_client_retries_each_chunk_it_was_refused():
    clock = FakeClock()
    transport = FakeTransport(reject=2)
    client = _client_with(transport, policy(clock))
    vectors = client.embed(["a", "b", "c"])  # chunks of 2 and 1
    assert vectors.shape == (3, 4)
    assert transport.calls == [2, 2, 2, 1]  # the first chunk twice refused, then both chunks once
    assert len(clock.sleeps) == 2


def test_client_without_policy_raises_the_overload():
    transport = FakeTransport(reject=1)
    client = _client_with(transport, None)
    with pytest.raises(ServerOverloadedError, match="queue size"):
        client.embed(["a"])
    assert transport.calls == [1]


def test_client_rejects_a_non_policy():
    with pytest.raises(ValueError, match="RetryPolicy"):
        TrtServeClient("127.0.0.1:1", retry=3)


class ReloadingTransport(FakeTransport):
    """The model is being loaded again (a one-model deployment under repair): its config is not
    found for the first ``missing`` lookups."""

    def __init__(self, missing):
        super().__init__(reject=0)
        self.missing = missing
        self.config_calls = 0

    def model_config(self, model):
        from tritonclient.utils import InferenceServerException

        self.config_calls += 1
        if self.config_calls <= self.missing:
            raise InferenceServerException(f"Request for unknown model: '{model}' has no available versions",
                                           status="StatusCode.NOT_FOUND")
        return {"max_batch_size": 2}


def test_the_config_lookup_is_retried_too():
    clock = FakeClock()
    transport = ReloadingTransport(missing=2)
    client = TrtServeClient("127.0.0.1:1", protocol="grpc", retry=policy(clock))
    client._transport.close()
    client._transport = transport
    assert client.embed(["a", "b", "c"]).shape == (3, 4)
    assert transport.config_calls == 3 and transport.calls == [2, 1] and len(clock.sleeps) == 2
    without = TrtServeClient("127.0.0.1:1", protocol="grpc")
    without._transport.close()
    without._transport = ReloadingTransport(missing=1)
    with pytest.raises(ModelNotReadyError, match="no available versions"):
        without.embed(["a"])
