"""``generate`` under the supervisor (issue 15), as `make serve` runs it: found by its contract
(PROMPT -> TEXT, FINISH_REASON, TOKENS), probed with a one-token generate, never misprobed as an
encoder: its bad-input failures and a full server do not make the supervisor reload it, and a
killed stub is reloaded and the model answers again.
"""
from __future__ import annotations

import os
import signal
import time

import pytest

from loadtest.faults import server_pid
from trtserve_backend.generation.requests import GenerationLimits
from trtserve_client import BadInputError, TrtServeClient
from trtserve_client.errors import ServerOverloadedError, TrtServeError
from trtserve_server.processes import stubs_of

from .supervised import start_supervised, stop_supervised

LIMITS = GenerationLimits(context_length=256, max_prompt_tokens=56, max_new_tokens=200, default_max_new_tokens=8,
                          max_sequences=4)
HARD_LIMIT_S = 30.0


@pytest.fixture(scope="module")
def supervised(gpt2_tiny_onnx, gpt2_tiny_checkpoint, tmp_path_factory):
    from trtserve_build.pipeline.generate import write_generate
    from trtserve_build.stages.generate_config import GenerateSettings

    root = tmp_path_factory.mktemp("generate-supervised")
    write_generate(root / "repo", gpt2_tiny_onnx, gpt2_tiny_checkpoint, GenerateSettings(limits=LIMITS))
    served = start_supervised(root / "repo", root / "triton.log")
    yield served
    stop_supervised(served)


def _wait_probes(supervised, at_least: int, timeout_s: float = 20.0) -> dict:
    deadline = time.monotonic() + timeout_s
    status = supervised.status()
    while status["probes"].get("generate", 0) < at_least and time.monotonic() < deadline:
        time.sleep(0.25)
        status = supervised.status()
    return status


def test_generate_is_served_and_probed_by_its_contract(supervised):
    assert any("Triton is serving generate" in line for line in supervised.output)
    status = _wait_probes(supervised, 3)
    assert status["probes"].get("generate", 0) >= 3
    assert status["probe_failures"].get("generate", 0) == 0, supervised.output[-20:]
    assert not status["reloads"] and status["restarts_total"] == 0


def test_bad_input_and_a_full_server_are_not_faults(supervised):
    """Bad requests count as failures in Triton's statistics (the supervisor then probes at once)
    and a full server turns probes away; neither is a broken model, so nothing is reloaded."""
    before, seen = supervised.status(), len(supervised.output)
    with TrtServeClient(supervised.grpc_url, timeout_s=30) as client:
        for _ in range(5):
            with pytest.raises(BadInputError):
                client.generate_text("hi", max_new_tokens=LIMITS.max_new_tokens + 1)
        # every sequence taken (4 streams of 200 tokens) while probes keep coming
        with TrtServeClient(supervised.http_url, protocol="http", timeout_s=60) as http:
            holders = [http.generate(f"hold {i}", max_new_tokens=LIMITS.max_new_tokens) for i in range(LIMITS.max_sequences)]
            for holder in holders:
                next(holder)
            time.sleep(2.0)
            for holder in holders:
                holder.close()
        # the disconnected holders are freed at the server's next step boundaries: until then it
        # is still full and says so ("try again later"), as a client sees it
        deadline = time.monotonic() + HARD_LIMIT_S
        while True:
            try:
                assert client.generate_text("hi", max_new_tokens=3).tokens == 3
                break
            except ServerOverloadedError:
                assert time.monotonic() < deadline, "the holders' sequences were not freed"
                time.sleep(0.2)
    after = _wait_probes(supervised, before["probes"].get("generate", 0) + 2)
    events = "".join(supervised.output[seen:])
    # a probe may time out on a loaded machine (not repaired unless it repeats with no progress);
    # a probe that fails with an error would mean the supervisor misreads the model
    assert "generate: failed after" not in events, events
    assert after["reloads"] == before["reloads"] and after["restarts_total"] == before["restarts_total"], events


def test_a_killed_generate_stub_is_reloaded(supervised):
    before = supervised.status()
    server = server_pid(supervised.pid)
    [stub] = [s for s in stubs_of(server) if s.instance.startswith("generate_")]
    os.kill(stub.pid, signal.SIGKILL)
    killed = time.monotonic()
    took = None
    with TrtServeClient(supervised.http_url, protocol="http", timeout_s=5) as client:
        while time.monotonic() - killed < HARD_LIMIT_S:
            try:
                if client.generate_text("still there?", max_new_tokens=2).tokens == 2:
                    took = time.monotonic() - killed
                    break
            except TrtServeError:
                time.sleep(0.25)
    print(f"generate stub kill -9: next good answer after {took}s")
    assert took is not None, "generate did not answer again within 30 s:\n" + "".join(supervised.output[-20:])
    after = supervised.status()
    assert sum(after["reloads"].values()) > sum(before["reloads"].values()) or after["restarts_total"] > before["restarts_total"]
