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


def python_holding(setup: str, prints: str) -> subprocess.Popen:
    """A Python process that runs ``setup`` (idle_poll imported), prints ``prints`` and sleeps."""
    code = (f"import os, time\nfrom trtserve_backend.idle_poll import ActivityStamp, IdlePoller\n{setup}\n"
            f"print({prints}, flush=True)\ntime.sleep(60)\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "serve"), str(ROOT / "contract")])}
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env)


def executing_in_another_process(path: str):
    """A process that starts an execution on the stamp at ``path`` and holds it (kill it to end)."""
    proc = python_holding(f"s = ActivityStamp({path!r}); s.begin()", "s.slot")
    return proc, int(proc.stdout.readline())


def test_instances_claim_slots_and_the_stamp_counts_executions_in_flight(stamp):
    assert stamp.executing() == 0 and stamp.slot is None
    stamp.begin()  # the first execution claims this process's slot
    mine = stamp.slot
    assert stamp.executing() == 1 and not stamp.more_than(1) and stamp.more_than(0)
    stamp.end()
    assert stamp.executing() == 0 and stamp.slot == mine and stamp.last_ns() > 0
    first, first_slot = executing_in_another_process(stamp.path)
    second, second_slot = executing_in_another_process(stamp.path)
    try:
        assert len({mine, first_slot, second_slot}) == 3
        assert set(stamp.claimed()) == {os.getpid(), first.pid, second.pid}
        assert stamp.executing() == 2 and stamp.more_than(1)
        first.kill()  # died while executing: its slot still says so, but its process is gone
        first.wait()
        assert stamp.executing() == 1 and not stamp.more_than(1)
        third, third_slot = executing_in_another_process(stamp.path)  # a restarted instance
        try:
            assert third_slot == first_slot and stamp.executing() == 2
        finally:
            third.kill()
            third.wait()
    finally:
        for proc in (first, second):
            proc.kill()
            proc.wait()


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


def test_pollers_do_not_spin_while_the_server_is_under_load(stamp):
    """More than BUSY_LIMIT executions in flight: the server's own threads keep the cores awake, so
    the pollers sleep through traffic, and spin again once one request at a time is left."""
    poller = IdlePoller(stamp, window_ms=5000, cores=[min(os.sched_getaffinity(0))], busy_limit=1)
    first, _ = executing_in_another_process(stamp.path)
    second, _ = executing_in_another_process(stamp.path)
    try:
        (child,) = poller.children
        assert wait_for(lambda: os.sched_getscheduler(child) == os.SCHED_IDLE)
        stamp.touch()  # recent traffic, two executions in flight: no spinning
        before = cpu_seconds(child)
        time.sleep(0.6)
        assert cpu_seconds(child) - before < 0.1
        second.kill()  # one left: it spins (it looks again within MAX_SLEEP_S)
        second.wait()
        stamp.touch()
        busy = cpu_seconds(child)
        assert wait_for(lambda: cpu_seconds(child) - busy >= 0.1, timeout_s=10)
    finally:
        poller.close()
        for proc in (first, second):
            proc.kill()
            proc.wait()


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
    proc = python_holding(f"p = IdlePoller(ActivityStamp.for_server(os.getpid(), {str(tmp_path)!r}), 50)",
                          "' '.join(map(str, p.children))")
    try:
        children = [int(p) for p in proc.stdout.readline().split()]
        assert len(children) == len(os.sched_getaffinity(0))
        assert all(Path(f"/proc/{c}").exists() for c in children)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert wait_for(lambda: not any(Path(f"/proc/{c}").exists() and "Z" not in Path(f"/proc/{c}/stat").read_text()
                                     .rsplit(")", 1)[1].split()[0] for c in children))


def _cgroup_tree(tmp_path, proc: str, files: dict[str, str]):
    (tmp_path / "proc_cgroup").write_text(proc)
    for rel, text in files.items():
        (tmp_path / "fs" / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "fs" / rel).write_text(text)
    return str(tmp_path / "fs"), str(tmp_path / "proc_cgroup")


@pytest.mark.parametrize("proc, files, expected", [
    # cgroup v2: the pod's limit sits above the container's cgroup, which has none
    ("0::/kubepods/pod1/ctr\n", {"kubepods/pod1/cpu.max": "200000 100000\n", "kubepods/pod1/ctr/cpu.max": "max 100000\n"},
     2.0),
    ("0::/kubepods/pod1/ctr\n", {"kubepods/pod1/ctr/cpu.max": "max 100000\n"}, None),
    ("0::/\n", {"cpu.max": "150000 100000\n"}, 1.5),  # a container's own namespace: its cgroup is the root
    # cgroup v1 (hybrid hosts): the cpu controller's quota, -1 for none
    ("1:cpu,cpuacct:/docker/abc\n0::/\n", {"cpu/docker/abc/cpu.cfs_quota_us": "50000\n",
                                           "cpu/docker/abc/cpu.cfs_period_us": "100000\n"}, 0.5),
    ("1:cpu:/\n0::/\n", {"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
])
def test_cpu_quota_reads_the_containers_limit_in_either_cgroup_version(tmp_path, proc, files, expected):
    from trtserve_backend.idle_poll import cpu_quota

    assert cpu_quota(*_cgroup_tree(tmp_path, proc, files)) == expected
    assert cpu_quota(str(tmp_path / "none"), str(tmp_path / "no_such_file")) is None


def test_no_pollers_under_a_cpu_quota_smaller_than_the_cores(stamp, monkeypatch):
    """SCHED_IDLE spinning still spends a container's CPU quota, and then the kernel stops every
    thread of the container until the next period: under such a limit the deployment does not poll
    and says why."""
    from trtserve_backend import idle_poll

    cores = len(os.sched_getaffinity(0))
    monkeypatch.setattr(idle_poll, "cpu_quota", lambda: cores - 0.5)
    limited = IdlePoller(stamp, window_ms=10)
    assert not limited.polling and f"limits CPU to {cores - 0.5:g} of {cores} cores" in limited.declined
    limited.close()
    monkeypatch.setattr(idle_poll, "cpu_quota", lambda: float(cores))  # a limit it cannot exceed
    allowed = IdlePoller(stamp, window_ms=10)
    try:
        assert allowed.polling and allowed.declined is None
    finally:
        allowed.close()
