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
``window_ms``, else sleeping with a backoff up to :data:`MAX_SLEEP_S`. The models stamp their
activity into a small shared file (:class:`ActivityStamp`, one per server: its name carries the
server's process id, trtserve_contract.boards).

Costs, why it is a per-engine setting (``idle_poll_ms``, off by default): the cores show busy
to anything that reads CPU usage (an autoscaler on CPU would scale out), they draw power, SMT
siblings share a core's execution units, and engines whose own threads wait by yielding
(ONNX Runtime's spinning pool on 2 vCPUs) get slower beside it: on the 2-core VM the same
spinners doubled the CPU engine's c=1 time. Turn it on where the engine runs on the GPU.
"""
from __future__ import annotations

import contextlib
import fcntl
import mmap
import os
import signal
import struct
import sys
import time
import warnings

from trtserve_contract.boards import ACTIVITY, board_directory, board_path

#: Longest sleep of an idle poller between looks at the stamp (its backoff starts at 1 ms).
MAX_SLEEP_S = 0.05
#: Empty loop turns between two looks at the stamp while spinning (~10-20 us of CPython): the
#: lightest spin Python has (no calls, no allocations, no clock: a clock read that is not served
#: by the vDSO costs the hypervisor an exit), to take as little as possible from the host.
SPIN_TURNS = 1000
_STAMP = struct.Struct("q")
_PR_SET_PDEATHSIG = 1


class ActivityStamp:
    """The monotonic time (ns) a model of one server last started or ended an execution, in a
    file every process of that server maps (one aligned 8-byte store per touch: no lock)."""

    def __init__(self, path: str):
        self.path = path
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if os.fstat(fd).st_size < _STAMP.size:
                os.ftruncate(fd, _STAMP.size)
            self._map = mmap.mmap(fd, _STAMP.size)
        finally:
            os.close(fd)

    @classmethod
    def for_server(cls, server_pid: int | None = None, directory: str | None = None) -> "ActivityStamp":
        """The stamp of the server that started this process (a stub's parent is the server)."""
        pid = os.getppid() if server_pid is None else server_pid
        return cls(board_path(directory or board_directory(), pid, ACTIVITY))

    def touch(self) -> None:
        _STAMP.pack_into(self._map, 0, time.monotonic_ns())

    def last_ns(self) -> int:
        return _STAMP.unpack_from(self._map, 0)[0]

    def close(self) -> None:
        self._map.close()


class IdlePoller:
    """One SCHED_IDLE polling process per core of ``cores`` (default: every core this process may
    run on) while ``stamp``'s server executed within ``window_ms``. One poller per stamp file: the
    first to take its lock polls, the others do nothing, so each model instance can ask for one.
    Children die with the process that made them (``PR_SET_PDEATHSIG``)."""

    def __init__(self, stamp: ActivityStamp, window_ms: float, cores=None):
        if window_ms <= 0:
            raise ValueError(f"idle_poll window {window_ms} ms: must be > 0")
        self.stamp, self.window_ns, self.children = stamp, int(window_ms * 1e6), []
        self._lock = os.open(stamp.path, os.O_RDONLY)
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock)  # another process of this server polls already
            self._lock = None
            return
        parent = os.getpid()
        for cpu in sorted(cores if cores is not None else os.sched_getaffinity(0)):
            with warnings.catch_warnings():  # "multi-threaded, fork() may deadlock": the child only polls
                warnings.simplefilter("ignore", DeprecationWarning)
                pid = os.fork()
            if pid == 0:  # the child: poll until killed, never return into the caller's code
                code = 0
                try:
                    _poll(stamp, cpu, self.window_ns, parent)
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


def _die_with_parent(parent: int) -> None:
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(OSError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    if os.getppid() != parent:  # it died before the request above: no signal will come
        os._exit(0)


def _poll(stamp: ActivityStamp, cpu: int, window_ns: int, parent: int) -> None:
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
    # the window in spins of SPIN_TURNS, from the fastest of a few timed ones: while spinning the
    # poller reads only the stamp, and a new value restarts the window
    spins = max(1, window_ns // min(_timed(turns) for _ in range(5)))
    seen, left, sleep = last(), 0, 0.001
    while True:
        stamp_ns = last()
        if stamp_ns != seen:  # a model started or ended an execution
            seen, left, sleep = stamp_ns, spins, 0.001
        if left:
            left -= 1
            for _ in turns:
                pass
            continue
        time.sleep(sleep)  # no traffic for the window: sleep, backing off
        sleep = min(sleep * 2, MAX_SLEEP_S)
        if os.getppid() != parent:  # a second guard beside the death signal
            return


def _timed(turns) -> int:
    start = time.perf_counter_ns()
    for _ in turns:
        pass
    return max(1, time.perf_counter_ns() - start)
