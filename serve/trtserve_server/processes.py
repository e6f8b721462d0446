"""The Python-backend stub processes of one tritonserver, read from /proc (Linux).

tritonserver runs in its own process group (the launcher starts it with a new session) and
each Python-model instance is a ``triton_python_backend_stub`` child in that group, whose
command line names the instance (``sentiment_tokenizer_0_0``). The supervisor reads this table
to say *which* model failed (a stub that vanished, or one stopped or stuck in a signal) and to
kill a hung stub before the model is reloaded; detecting a failure is the probes' job.
"""
from __future__ import annotations

import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from .policy import describe_exit

__all__ = ["Stub", "stubs_of", "state_of", "cpu_seconds", "kill_stub", "reap", "release_regions", "STUB_NAME",
           "SHM_DIR"]

STUB_NAME = "triton_python_backend_stub"
_PROC = Path("/proc")
SHM_DIR = Path("/dev/shm")
_REGION_PREFIX = "triton_python_backend_shm_region_"
#: /proc/<pid>/stat states of a process that cannot answer: stopped, traced, zombie, dead
STUCK_STATES = frozenset("TtZXx")
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass(frozen=True)
class Stub:
    pid: int
    instance: str  # e.g. sentiment_tokenizer_0_0
    state: str  # one letter of /proc/<pid>/stat: R, S, D, T, Z, ...
    #: the POSIX shared-memory region Triton made for this stub (under /dev/shm)
    shm_region: str | None = None

    @property
    def stuck(self) -> bool:
        return self.state in STUCK_STATES


def _stat(pid_dir: Path) -> tuple[str, int] | None:
    """(state, process group) of a /proc/<pid> entry, or None if it is gone."""
    try:
        raw = (pid_dir / "stat").read_text()
    except OSError:
        return None
    # "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses; split after the last ')'
    fields = raw[raw.rfind(")") + 2:].split()
    return fields[0], int(fields[2])


def _instance_from_cmdline(argv: list[str]) -> str | None:
    """The instance name in a stub's argv: the argument that follows the shm sizes and the
    parent pid, i.e. the one before the last (``... <backend dir> <port> <instance> <kind>``);
    found by shape, not position: the first argument after the model.py path that names a
    ``<model>_<group>_<index>`` instance."""
    if not argv or not argv[0].endswith(STUB_NAME):
        return None
    candidates = [a for a in argv[2:] if "_" in a and a.rsplit("_", 1)[-1].isdigit() and not a.isdigit()]
    return candidates[-1] if candidates else None


def stubs_of(server_pid: int, proc: Path = _PROC) -> list[Stub]:
    """The stub processes in ``server_pid``'s process group, sorted by instance name."""
    found = []
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == server_pid:
            continue
        stat = _stat(entry)
        if stat is None or stat[1] != server_pid:
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        args = [a.decode(errors="replace") for a in argv if a]
        instance = _instance_from_cmdline(args)
        if instance:
            region = next((a for a in args if a.startswith(_REGION_PREFIX) and "/" not in a), None)
            found.append(Stub(int(entry.name), instance, stat[0], region))
    return sorted(found, key=lambda s: s.instance)


def state_of(pid: int, proc: Path = _PROC) -> str | None:
    """The /proc state letter of ``pid``; None when it is gone (a cheap re-check of one stub)."""
    stat = _stat(proc / str(pid))
    return stat[0] if stat else None


def cpu_seconds(pid: int, proc: Path = _PROC) -> float | None:
    """User + system CPU time ``pid`` has used so far; None when it is gone."""
    try:
        raw = (proc / str(pid) / "stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rfind(")") + 2:].split()  # fields[0] is the state (field 3 of stat)
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS  # utime, stime (fields 14, 15)


def kill_stub(stub: Stub) -> None:
    """SIGKILL a stub (a stopped one dies too); a stub already gone is fine."""
    try:
        os.kill(stub.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def reap(stubs: list[Stub], wait_s: float, proc: Path = _PROC) -> list[Stub]:
    """Wait up to ``wait_s`` for ``stubs`` (of models just unloaded) to exit; SIGKILL those still
    running then, and return them. Triton's unload can return while an instance's stub lives on:
    seen when a sibling instance's stub of the same model had been killed, the healthy one stayed,
    serving no model and holding its memory, after the model was loaded again."""
    deadline = time.monotonic() + wait_s
    left = list(stubs)
    while left:
        left = [st for st in left if (state_of(st.pid, proc) or "X") not in "ZX"]
        if not left or time.monotonic() >= deadline:
            break
        time.sleep(0.05)
    for st in left:
        kill_stub(st)
    return left


def release_regions(regions: set[str], shm_dir: Path = SHM_DIR) -> list[str]:
    """Unlink the shared-memory regions ``regions`` (names seen in our own stubs' command lines).

    tritonserver unlinks a stub's region when it unloads the model normally, but not the
    region of a stub that was killed, nor any region when tritonserver itself is killed: 1 MiB
    or more of RAM (/dev/shm is tmpfs) per fault. Returns the names removed."""
    removed = []
    for name in sorted(regions):
        if not name.startswith(_REGION_PREFIX) or "/" in name:
            continue
        try:
            (shm_dir / name).unlink()
            removed.append(name)
        except FileNotFoundError:
            pass
    return removed


def while_alive(process, what: str, call, *args, poll_s: float = 0.1, **kwargs):
    """``call(*args, **kwargs)`` (a blocking repository request), given up as soon as ``process``
    (tritonserver) exits meanwhile: OSError naming ``what``, so the caller restarts the server now
    instead of waiting out the request's timeout (Triton 2.51 can crash while it unloads a model
    whose stub died; measured: the reload then waited its whole 30 s)."""
    box: dict = {}

    def run():
        try:
            box["value"] = call(*args, **kwargs)
        except BaseException as e:  # noqa: BLE001 - handed to the caller's thread
            box["error"] = e

    worker = threading.Thread(target=run, name="trtserve-repository-call", daemon=True)
    worker.start()
    while worker.is_alive():
        worker.join(poll_s)
        if worker.is_alive() and process is not None and process.poll() is not None:
            raise OSError(f"tritonserver exited ({describe_exit(process.returncode)}) during {what}")
    if "error" in box:
        raise box["error"]
    return box.get("value")
