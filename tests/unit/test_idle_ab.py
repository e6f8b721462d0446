"""bench/idle_ab.py's host conditions (issue 13's c=1 probe): each one is set up and torn down
around one measurement and leaves nothing behind."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench import idle_ab


def _children_of_me() -> set[int]:
    me = os.getpid()
    return {pid for pid, parent in idle_ab.perf_analyzer._parents().items() if parent == me}


def test_idle_spinners_run_one_idle_class_loop_per_core_and_stop():
    before = _children_of_me()
    with idle_ab.condition("idlespin", 0, "sentiment"):
        spinners = _children_of_me() - before
        assert len(spinners) == len(os.sched_getaffinity(0))
        policies = {os.sched_getscheduler(pid) for pid in spinners}
        assert policies == {os.SCHED_IDLE}
    time.sleep(0.1)
    assert not (_children_of_me() - before) & spinners


def test_pinned_moves_every_thread_to_one_core_and_restores_it():
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("one core: nothing to pin")
    child = subprocess.Popen([sys.executable, "-c", "import threading, time\n"
                              "threading.Thread(target=time.sleep, args=(30,), daemon=True).start()\n"
                              "time.sleep(30)"])
    try:
        time.sleep(0.3)
        tids = [int(t) for t in os.listdir(f"/proc/{child.pid}/task")]
        assert len(tids) >= 2
        original = {tid: os.sched_getaffinity(tid) for tid in tids}
        with idle_ab.pinned(child.pid):
            assert {frozenset(os.sched_getaffinity(tid)) for tid in tids} == {frozenset({max(os.sched_getaffinity(0))})}
        assert {tid: os.sched_getaffinity(tid) for tid in tids} == original
    finally:
        child.kill()
        child.wait()


def test_conditions_compose_and_unknown_ones_are_named():
    with idle_ab.condition("quiet+quiet", 0, "sentiment"):
        pass
    with pytest.raises(ValueError, match="condition 'loud'"):
        idle_ab.condition("loud", 0, "sentiment")


def test_host_facts_say_whether_pm_qos_can_be_requested():
    facts = idle_ab.host_facts()
    assert facts["cores"] == os.cpu_count()
    assert facts["cpu_dma_latency_writable"] == os.access("/dev/cpu_dma_latency", os.W_OK)
    if Path("/sys/devices/system/cpu/cpu0/cpuidle").is_dir():
        assert all("latency" in s for s in facts["cpu0_idle_states"])


def test_medians_are_per_condition_and_client_count_over_the_rounds():
    rows = [{"condition": c, "concurrency": n, "round": r, "p50_ms": p, "infer_per_s": 1000 / p,
             "stages": {"sentiment": {"exec_us": p * 500}}}
            for c, n, r, p in [("quiet", 1, 0, 1.5), ("quiet", 1, 1, 1.4), ("quiet", 1, 2, 1.9),
                               ("poll", 1, 0, 1.2), ("poll", 1, 1, 1.3), ("poll", 512, 0, 20.0)]]
    rows.append({"condition": "poll", "concurrency": 1, "round": 2, "error": "perf_analyzer exit 1"})
    out = idle_ab.medians(rows, ["quiet", "poll"], [1, 512], "sentiment")
    assert out["quiet c=1"] == {"p50_ms": 1.5, "infer_per_s": 1000 / 1.5, "exec_us": 750.0, "rounds": 3}
    assert out["poll c=1"]["p50_ms"] == 1.25 and out["poll c=1"]["rounds"] == 2  # the failed row is left out
    assert out["poll c=512"]["rounds"] == 1 and "quiet c=512" not in out


@pytest.mark.parametrize("name, limit", [("poll", 1), ("pollall", None)])
def test_poll_conditions_host_the_servers_pollers_load_aware_or_not(name, limit, monkeypatch, tmp_path):
    from trtserve_backend import idle_poll

    made = []
    real = idle_poll.IdlePoller

    def recording(stamp, window_ms, cores=None, busy_limit=idle_poll.BUSY_LIMIT):
        made.append(real(stamp, window_ms, cores=[min(os.sched_getaffinity(0))], busy_limit=busy_limit))
        return made[-1]

    monkeypatch.setattr(idle_poll, "IdlePoller", recording)
    monkeypatch.setattr(idle_poll, "board_directory", lambda: str(tmp_path))
    with idle_ab.condition(name, os.getpid(), "sentiment", poll_ms=7):
        (poller,) = made
        assert poller.polling and poller.busy_limit == limit and poller.window_ns == 7_000_000
    assert not poller.children
    assert (tmp_path / f"trtserve-busy-{os.getpid()}-.activity").exists()


def test_with_model_poll_turns_the_deployments_own_pollers_off_in_a_copy(tmp_path):
    """``--model-poll-ms``: the served copy's ModelConfig carries the asked idle_poll_ms (0: none);
    the original repository is left as it was (the copy's files are hard links)."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc

    original = tmp_path / "repo"
    (original / "sentiment" / "1").mkdir(parents=True)
    config = mc.ModelConfig(name="sentiment", backend="python")
    config.parameters["idle_poll_ms"].string_value = "20"
    config.parameters["encoder_output"].string_value = "logits"
    (original / "sentiment" / "config.pbtxt").write_text(text_format.MessageToString(config))
    (original / "sentiment" / "1" / "model.py").write_text("# the model\n")

    def params(repo):
        parsed = text_format.Parse((repo / "sentiment" / "config.pbtxt").read_text(), mc.ModelConfig())
        return {k: v.string_value for k, v in parsed.parameters.items()}

    off = idle_ab.with_model_poll(original, "sentiment", 0, tmp_path / "a")
    assert params(off) == {"encoder_output": "logits"}
    assert (off / "sentiment" / "1" / "model.py").stat().st_ino == (original / "sentiment" / "1" / "model.py").stat().st_ino
    assert params(original)["idle_poll_ms"] == "20"
    assert params(idle_ab.with_model_poll(original, "sentiment", 5, tmp_path / "b"))["idle_poll_ms"] == "5"
