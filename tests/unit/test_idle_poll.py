"""User-space halt polling (trtserve_backend/idle_poll.py, a one-model deployment's ``idle_poll_ms``):
the pollers run at SCHED_IDLE, one per core, burn CPU only while the server's activity stamp is
recent, one poller per server, and die with the process that made them."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from trtserve_backend.idle_poll import ActivityStamp, IdlePoller
from trtserve_contract.boards import remove_stale_boards
from trtserve_server.processes import cpu_seconds

ROOT = Path(__file__).resolve().parents[2]


def wait_for(predicate, timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


@pytest.fixture
def stamp(tmp_path):
    s = ActivityStamp.for_server(os.getpid(), str(tmp_path))
    yield s
    s.close()


def test_the_stamp_is_one_file_per_server_that_any_process_reads(stamp, tmp_path):
    assert Path(stamp.path).name == f"trtserve-busy-{os.getpid()}-.activity"
    assert stamp.last_ns() == 0
    stamp.touch()
    other = ActivityStamp(stamp.path)  # another process of the server maps the same file
    assert 0 < other.last_ns() <= time.monotonic_ns()
    other.close()
    dead = ActivityStamp.for_server(2 ** 22 + 7, str(tmp_path))  # a pid no process has
    dead.close()
    remove_stale_boards(str(tmp_path))
    assert os.path.exists(stamp.path) and not os.path.exists(dead.path)


def test_pollers_spin_at_idle_priority_only_while_the_server_is_active(stamp):
    poller = IdlePoller(stamp, window_ms=300, cores=[min(os.sched_getaffinity(0))])
    try:
        (child,) = poller.children
        assert wait_for(lambda: os.sched_getscheduler(child) == os.SCHED_IDLE)
        assert os.sched_getaffinity(child) == {min(os.sched_getaffinity(0))}
        assert wait_for(lambda: os.getpgid(child) == child)  # out of the server's group: not a "stub"
        idle = cpu_seconds(child)
        time.sleep(0.5)  # never stamped: it sleeps (backoff up to 50 ms)
        assert cpu_seconds(child) - idle < 0.1
        stamp.touch()  # traffic: it spins for the window, then sleeps again
        busy = cpu_seconds(child)
        assert wait_for(lambda: cpu_seconds(child) - busy >= 0.05, timeout_s=10)
        time.sleep(0.4)
        after = cpu_seconds(child)
        time.sleep(0.5)
        assert cpu_seconds(child) - after < 0.1
    finally:
        poller.close()
    assert not poller.children and not Path(f"/proc/{child}").exists()


def test_one_poller_per_server_and_the_lock_frees_with_it(stamp):
    first = IdlePoller(stamp, window_ms=10, cores=[min(os.sched_getaffinity(0))])
    second = IdlePoller(stamp, window_ms=10, cores=[min(os.sched_getaffinity(0))])
    try:
        assert first.polling and not second.polling
    finally:
        first.close()
        second.close()
    third = IdlePoller(stamp, window_ms=10, cores=[min(os.sched_getaffinity(0))])
    try:
        assert third.polling
    finally:
        third.close()
    with pytest.raises(ValueError, match="must be > 0"):
        IdlePoller(stamp, window_ms=0)


def test_pollers_die_with_the_process_that_made_them(tmp_path):
    code = ("import os, sys, time\n"
            "from trtserve_backend.idle_poll import ActivityStamp, IdlePoller\n"
            f"p = IdlePoller(ActivityStamp.for_server(os.getpid(), {str(tmp_path)!r}), 50)\n"
            "print(' '.join(map(str, p.children)), flush=True)\n"
            "time.sleep(60)\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "serve"), str(ROOT / "contract")])}
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env)
    try:
        children = [int(p) for p in proc.stdout.readline().split()]
        assert len(children) == len(os.sched_getaffinity(0))
        assert all(Path(f"/proc/{c}").exists() for c in children)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert wait_for(lambda: not any(Path(f"/proc/{c}").exists() and "Z" not in Path(f"/proc/{c}/stat").read_text()
                                     .rsplit(")", 1)[1].split()[0] for c in children))
