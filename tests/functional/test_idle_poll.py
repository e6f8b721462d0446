"""The opt-in pollers (``idle_poll_ms``, trtserve_backend/idle_poll.py) in the real server: a real
stub forks them, the answers do not change, the supervisor's view of the stubs does not see
them, they die with their stub, and the stub Triton starts in its place polls again.

The spec accepts ``idle_poll_ms`` for the torch engine only (it costs ONNX Runtime dearly), and no
torch engine runs here without a GPU; the model code is the same for either engine, so the test
sets the parameter on the cpu variant's generated config (protobuf), as a build would write it.
"""
from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow

TEXTS = ["a gripping, beautifully acted film", "dull and far too long"]


def _pollers() -> dict[int, int]:
    """{pid: parent pid} of every SCHED_IDLE process whose parent is a Python-backend stub."""
    out = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.sched_getscheduler(int(entry.name)) != os.SCHED_IDLE:
                continue
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if (Path(f"/proc/{parent}/comm")).read_text().strip().startswith("triton_python"):
                out[int(entry.name)] = parent
        except (OSError, ValueError):
            continue
    return out


def _wait(predicate, timeout_s: float = 20.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    return predicate()


@pytest.fixture(scope="module")
def polled_repository(cpu_repository, tmp_path_factory):
    from trtserve_build.core.pbtxt import read_config, write_config

    out = tmp_path_factory.mktemp("polled") / "repository"
    shutil.copytree(cpu_repository / "sentiment", out / "sentiment")
    config = read_config(out / "sentiment" / "config.pbtxt")
    config.parameters["idle_poll_ms"].string_value = "20"
    write_config(config, out / "sentiment" / "config.pbtxt")
    return out


def _infer(url: str):
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(url)
    try:
        inp = httpclient.InferInput("TEXT", [len(TEXTS), 1], "BYTES")
        inp.set_data_from_numpy(np.array([[t.encode()] for t in TEXTS], dtype=np.object_))
        result = client.infer("sentiment", [inp], timeout=10)
        return {n: result.as_numpy(n) for n in ("LABEL", "PROBABILITIES")}
    finally:
        client.close()


def _answer(url: str):
    try:
        return _infer(url)
    except Exception:  # noqa: BLE001 - the stub is being restarted
        return None


def test_a_real_stub_polls_answers_alike_and_its_pollers_follow_it(polled_repository, server, tmp_path):
    """Served as `make serve` serves (supervised): the supervisor heals the killed stub."""
    from trtserve_server.processes import stubs_of

    from .supervised import start_supervised, stop_supervised

    before = set(_pollers())
    expected = _infer(server.http_url)  # the session's server: no pollers
    served = start_supervised(polled_repository, tmp_path / "triton.log")
    try:
        from loadtest.faults import server_pid

        triton = server_pid(served.pid)
        pollers = _wait(lambda: {p: s for p, s in _pollers().items() if p not in before})
        owner = set(pollers.values())
        assert len(pollers) == len(os.sched_getaffinity(0)), pollers
        assert len(owner) == 1  # one poller set per server
        stubs = {st.pid for st in stubs_of(triton)}
        assert owner <= stubs and not set(pollers) & stubs  # the supervisor sees stubs, not pollers
        assert (tmp_path / "triton.log").read_text().count("cores while the server executed within 20 ms") == 1

        got = _infer(served.http_url)
        assert (got["LABEL"] == expected["LABEL"]).all()
        np.testing.assert_allclose(got["PROBABILITIES"], expected["PROBABILITIES"], atol=1e-6)
        # the stub that executed claimed a slot in the server's stamp, and once the supervisor's
        # probes are answered too, nothing is left in flight
        from trtserve_backend.idle_poll import ActivityStamp

        stamp = ActivityStamp.for_server(triton)
        try:
            assert stamp.last_ns() > 0 and _wait(lambda: stamp.executing() == 0, timeout_s=10)
            assert stamp.claimed() and set(stamp.claimed()) <= stubs
        finally:
            stamp.close()

        os.kill(owner.pop(), signal.SIGKILL)  # the stub that owns the pollers dies
        assert _wait(lambda: not any(Path(f"/proc/{p}").exists() and
                                     " Z " not in Path(f"/proc/{p}/stat").read_text() for p in pollers))
        # the supervisor brings the stub back; its initialize polls again
        answer = _wait(lambda: _answer(served.http_url), timeout_s=60)
        assert answer is not None and (answer["LABEL"] == expected["LABEL"]).all()
        assert _wait(lambda: len({p for p in _pollers() if p not in before} - set(pollers))
                     == len(os.sched_getaffinity(0)), timeout_s=30)
    finally:
        stop_supervised(served)  # asserts that no process (a poller included) is left
    assert not set(_pollers()) - before
