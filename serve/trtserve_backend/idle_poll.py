"""User-space halt polling: keep the host's cores from going idle while requests are flowing.

On a virtual machine whose guest kernel has no polling idle driver (``/sys/devices/system/cpu/
cpuidle/current_driver`` = ``none``: the GPU machine and the 2-core VM here), a core with nothing
to run halts and the hypervisor takes it away; the thread woken on it next (Triton's gRPC and
instance threads, the stub, the client) waits for the hypervisor to bring it back. One request
at a time wakes several threads per request, each on a halted core: measured on an H200 VM
(bench/idle_ab.py, 16 cores), served c=1 p50 1.405 ms with the cores left alone against 1.155 ms
with every core busy in a SCHED_IDLE loop, the same server.

:class:`IdlePoller` does that only while there is traffic: one process per allowed core, at
SCHED_IDLE priority (it runs only when the core has nothing else to run, and any woken thread
takes the core from it at once), spinning while a model of this server executed within
``window_ms`` and no more than :data:`BUSY_LIMIT` executions are in flight, else sleeping with a
backoff up to :data:`MAX_SLEEP_S`: one request at a time is where the wakeups cost, while under
load the server's own threads keep the cores awake. The models stamp their activity into a small
shared file (:class:`ActivityStamp`, one per server: its name carries the server's process id,
trtserve_contract.boards).

Costs, why it is a per-engine setting (``idle_poll_ms``, off unless a spec sets it): the cores show busy
to anything that reads CPU usage (an autoscaler on CPU would scale out), they draw power, SMT
siblings share a core's execution units, and engines whose own threads wait by yielding
(ONNX Runtime's spinning pool on 2 vCPUs) get slower beside it: on the 2-core VM the same
spinners doubled the CPU engine's c=1 time. Turn it on where the engine runs on the GPU.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import sys
import time
import warnings

import numpy as np

from trtserve_contract.boards import ACTIVITY, alive, board_directory, board_path, map_board

#: Shortest and longest sleep of an idle poller between looks at the stamp (a backoff).
MIN_SLEEP_S, MAX_SLEEP_S = 0.001, 0.05
#: Empty loop turns between two looks at the stamp while spinning (~10-20 us of CPython): the
#: lightest spin Python has (no calls, no allocations, no clock: a clock read that is not served
#: by the vDSO costs the hypervisor an exit), to take as little as possible from the host.
SPIN_TURNS = 1000
#: Model instances of one server the stamp tells apart (more share the time word only).
SLOTS = 128
_SIZE = 8 * (1 + 2 * SLOTS)
#: The most executions in flight at which the pollers still spin: one request at a time pays for the
#: wakeups (each hop wakes a halted core); under load the server's own threads keep the cores
#: awake, and spinning beside them only takes from them (the first poller, spinning at any load,
#: cost 13% of the 512-client throughput on the H200 machine).
BUSY_LIMIT = 1
_PR_SET_PDEATHSIG = 1


class ActivityStamp:
    """What the models of one server are doing, in a file every process of that server maps:
    word 0 is the monotonic time (ns) a model last started or ended an execution; then one word
    per model instance (its process id while it executes, else 0), the instance's slot, claimed
    at first use under a lock (``<stamp>.claims``) from those free or left by a dead process.
    Aligned 8-byte stores, one writer per word but the time (any of them: the latest wins), so no
    lock on the way through an execution."""

    def __init__(self, path: str):
        self.path = path
        self._map = map_board(path, _SIZE)
        words = np.frombuffer(self._map, dtype=np.int64)
        self._time, self._owners, self._running = words[:1], words[1:1 + SLOTS], words[1 + SLOTS:]
        self.slot: int | None = None
        self._pid = 0  # this process's id once it tried to claim a slot (0: not yet)

    @classmethod
    def for_server(cls, server_pid: int | None = None, directory: str | None = None) -> "ActivityStamp":
        """The stamp of the server that started this process (a stub's parent is the server)."""
        pid = os.getppid() if server_pid is None else server_pid
        return cls(board_path(directory or board_directory(), pid, ACTIVITY))

    def claim(self) -> int | None:
        """This process's slot (a free one, or one whose process is gone); None when all
        :data:`SLOTS` are taken (its executions then move only the time)."""
        if not self._pid:  # once: a process that found every slot taken does not ask again
            self._pid = mine = os.getpid()
            lock = os.open(self.path + ".claims", os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(lock, fcntl.LOCK_EX)
                free = [i for i, pid in enumerate(self._owners.tolist()) if pid in (0, mine) or not alive(pid)]
                if free:
                    self.slot = free[0]
                    self._running[self.slot] = 0
                    self._owners[self.slot] = mine
            finally:
                os.close(lock)  # releases the lock
        return self.slot

    def begin(self) -> None:
        """An execution of this process starts (claims a slot the first time)."""
        slot = self.claim()
        if slot is not None:
            self._running[slot] = self._pid
        self.touch()

    def end(self) -> None:
        if self.slot is not None:
            self._running[self.slot] = 0
        self.touch()

    def touch(self) -> None:
        self._time[0] = time.monotonic_ns()

    def last_ns(self) -> int:
        return int(self._time[0])

    def claimed(self) -> list[int]:
        """The process ids that hold a slot (a dead one's until another process reuses it)."""
        return [pid for pid in self._owners.tolist() if pid]

    def executing(self) -> int:
        """How many instances of the server execute now (a process that died executing is not
        counted)."""
        return sum(1 for pid in self._running.tolist() if pid and alive(pid))

    def more_than(self, limit: int) -> bool:
        """Whether more than ``limit`` instances execute now: one read of the slots, the
        processes asked whether they live only when the count says yes."""
        return int(np.count_nonzero(self._running)) > limit and self.executing() > limit

    def close(self) -> None:
        del self._time, self._owners, self._running  # the arrays' views of the map go before the map
        self._map.close()


class IdlePoller:
    """One SCHED_IDLE polling process per core of ``cores`` (default: every core this process may
    run on) while ``stamp``'s server executed within ``window_ms`` and at most ``busy_limit`` of
    its instances execute at once (None: at any load). One poller per stamp file: the first to
    take its lock polls, the others do nothing, so each model instance can ask for one. Children
    die with the process that made them (``PR_SET_PDEATHSIG``)."""

    def __init__(self, stamp: ActivityStamp, window_ms: float, cores=None, busy_limit: int | None = BUSY_LIMIT):
        if window_ms <= 0:
            raise ValueError(f"idle_poll window {window_ms} ms: must be > 0")
        self.stamp, self.window_ns, self.busy_limit, self.children = stamp, int(window_ms * 1e6), busy_limit, []
        self._lock, cores = None, sorted(cores if cores is not None else os.sched_getaffinity(0))
        quota = cpu_quota()
        #: why this process does not poll though it could have (None: it polls, or another does)
        self.declined = (f"the cgroup limits CPU to {quota:g} of {len(cores)} cores: pollers would spend the quota "
                         f"and the kernel would throttle the server" if quota is not None and quota < len(cores)
                         else None)
        if self.declined:
            return
        lock = os.open(stamp.path, os.O_RDONLY)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(lock)  # another process of this server polls already
            return
        self._lock, parent = lock, os.getpid()
        for cpu in cores:
            with warnings.catch_warnings():  # "multi-threaded, fork() may deadlock": the child only polls
                warnings.simplefilter("ignore", DeprecationWarning)
                pid = os.fork()
            if pid == 0:  # the child: poll until killed, never return into the caller's code
                code = 0
                try:
                    _poll(stamp, cpu, self.window_ns, parent, busy_limit)
                except BaseException:  # noqa: BLE001 - a child must not run its parent's code on
                    code = 1
                finally:
                    os._exit(code)
            self.children.append(pid)

    @property
    def polling(self) -> bool:
        return bool(self.children)

    def close(self) -> None:
        for pid in self.children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for pid in self.children:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        self.children = []
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None


def cpu_quota(root: str = "/sys/fs/cgroup", proc_cgroup: str = "/proc/self/cgroup") -> float | None:
    """The CPU limit (in cores) of this process's cgroup or any above it, None without one.

    A quota (a container's CPU limit: ``cpu.max`` in cgroup v2, ``cpu.cfs_quota_us`` in v1) counts
    a SCHED_IDLE poller's spinning like any work: the pollers would spend it and the kernel would
    then stop every thread of the container for the rest of the period."""
    try:
        lines = open(proc_cgroup).read().splitlines()
    except OSError:
        return None
    limits = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":  # v2: cpu.max in the process's cgroup and each above it
            parts = [p for p in path.split("/") if p]
            for depth in range(len(parts), -1, -1):
                with contextlib.suppress(OSError, ValueError):
                    quota, period = open(os.path.join(root, *parts[:depth], "cpu.max")).read().split()
                    if quota != "max":
                        limits.append(int(quota) / int(period))
        elif "cpu" in controllers.split(","):  # v1: the cpu controller's mount
            for base in (os.path.join(root, "cpu", path.lstrip("/")), os.path.join(root, "cpu")):
                with contextlib.suppress(OSError, ValueError):
                    quota = int(open(os.path.join(base, "cpu.cfs_quota_us")).read())
                    period = int(open(os.path.join(base, "cpu.cfs_period_us")).read())
                    if quota > 0:
                        limits.append(quota / period)
                    break
    return min(limits) if limits else None


def _die_with_parent(parent: int) -> None:
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(OSError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    if os.getppid() != parent:  # it died before the request above: no signal will come
        os._exit(0)


def _poll(stamp: ActivityStamp, cpu: int, window_ns: int, parent: int, busy_limit: int | None) -> None:
    _die_with_parent(parent)
    # A forked poller keeps the stub's command line: out of the server's process group, so that
    # whatever finds the stubs by group (trtserve_server.processes.stubs_of, the supervisor) does
    # not take a poller for one. It still dies with its stub (the death signal).
    with contextlib.suppress(OSError):
        os.setpgid(0, 0)
    with contextlib.suppress(OSError):
        os.sched_setaffinity(0, {cpu})
    os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    last, turns = stamp.last_ns, range(SPIN_TURNS)
    loaded = (lambda: False) if busy_limit is None else (lambda: stamp.more_than(busy_limit))
    # the window in spins of SPIN_TURNS, from the fastest of a few timed ones: while spinning the
    # poller reads only the stamp and the slots, and a new time restarts the window
    spins = max(1, window_ns // min(_timed(turns) for _ in range(5)))
    seen, left, sleep = last(), 0, MIN_SLEEP_S
    while True:
        stamp_ns = last()
        if stamp_ns != seen:  # a model started or ended an execution
            seen, left = stamp_ns, spins
        if left and not loaded():
            left, sleep = left - 1, MIN_SLEEP_S
            for _ in turns:
                pass
            continue
        # no execution within the window, or the server under load: sleep, backing off (a load
        # that ends is seen within MAX_SLEEP_S)
        time.sleep(sleep)
        sleep = min(sleep * 2, MAX_SLEEP_S)
        if os.getppid() != parent:  # a second guard beside the death signal
            return


def _timed(turns) -> int:
    start = time.perf_counter_ns()
    for _ in turns:
        pass
    return max(1, time.perf_counter_ns() - start)
