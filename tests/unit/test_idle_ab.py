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
