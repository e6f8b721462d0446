"""Fault injection against a running `trtserve-server serve`, and the time to the next good answer.

The faults of issue 15, each a real signal to a real process of the served tree:

=================  ============================================================
``kill-stub``       SIGKILL a stub of the deployment (in the one-model topology, the
                    one Python model that tokenizes, runs the engine and postprocesses)
``kill-tokenizer``  SIGKILL the ``<deployment>_tokenizer`` stub (ensemble topology)
``kill-encoder``    SIGKILL the ``<deployment>_encoder`` stub (an ensemble whose encoder
                    is a Python model: ONNX Runtime or torch)
``kill-postprocess`` SIGKILL the ``<deployment>_postprocess`` stub (ensemble topology)
``stop-stub``       SIGSTOP a stub of the deployment (a hang: it never answers)
``segv-server``     SIGSEGV ``tritonserver`` itself
=================  ============================================================

Which stubs exist depends on how the deployment is served: :func:`faults_for` names the faults
that have a target in the running tree (the step faults only where the ensemble's steps run).

:func:`time_to_answer` measures recovery as a user sees it: from the fault to the first
request that gets a good answer, polling with a client that does not retry.
"""
from __future__ import annotations

import os
import random
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from trtserve_client import TrtServeClient
from trtserve_client.errors import TrtServeError
from trtserve_server.processes import stubs_of

__all__ = ["FAULTS", "STEP_FAULTS", "Fault", "faults_for", "inject", "server_pid", "time_to_answer", "descendants",
           "still_running"]

#: SIGKILL of the stub of one ensemble step (``<deployment>_<step>``)
STEP_FAULTS = ("kill-tokenizer", "kill-encoder", "kill-postprocess")
FAULTS = ("kill-stub", *STEP_FAULTS, "stop-stub", "segv-server")


@dataclass(frozen=True)
class Fault:
    kind: str
    deployment: str
    target: str  # the instance or process hit
    pid: int
    at: float  # time.monotonic() of the signal


def _ppid_and_comm(pid: int) -> tuple[int, str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    comm = raw[raw.index("(") + 1:raw.rindex(")")]
    return int(raw[raw.rindex(")") + 2:].split()[1]), comm


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (children, grandchildren, ...)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            info = _ppid_and_comm(int(entry.name))
            if info:
                parents.setdefault(info[0], []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def still_running(pids: list[int], wait_s: float = 10.0) -> list[int]:
    """Those of ``pids`` still running after up to ``wait_s`` seconds (a zombie waiting for its
    new parent to reap it has stopped: it is not counted)."""
    deadline = time.monotonic() + wait_s
    while True:
        running = []
        for pid in pids:
            try:
                state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if state not in "ZX":
                running.append(pid)
        if not running or time.monotonic() >= deadline:
            return running
        time.sleep(0.1)


def server_pid(launcher_pid: int) -> int | None:
    """The tritonserver started by the launcher ``launcher_pid`` (None while there is none)."""
    for pid in descendants(launcher_pid):
        info = _ppid_and_comm(pid)
        if info and info[1] == "tritonserver":
            return pid
    return None


def _wait_dead(pid: int, limit_s: float = 10.0) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return
        if state in "ZX":
            return
        time.sleep(0.005)


def _targets(kind: str, server: int, deployment: str) -> list:
    """The running stubs of ``deployment`` that the stub fault ``kind`` may hit."""
    stubs = [s for s in stubs_of(server) if s.instance.startswith(f"{deployment}_") and not s.stuck]
    if kind in STEP_FAULTS:
        return [s for s in stubs if s.instance.startswith(f"{deployment}_{kind.removeprefix('kill-')}_")]
    if kind in ("kill-stub", "stop-stub"):
        return stubs
    raise ValueError(f"unknown fault {kind!r}; known: {FAULTS}")


def faults_for(launcher_pid: int, deployment: str) -> tuple[str, ...]:
    """The faults of :data:`FAULTS` that have a target for ``deployment`` in the running tree: a
    one-model deployment has no step stubs, an ensemble around a C++ engine no encoder stub."""
    server = server_pid(launcher_pid)
    if server is None:
        raise RuntimeError(f"no tritonserver under pid {launcher_pid}")
    return tuple(k for k in FAULTS if k == "segv-server" or _targets(k, server, deployment))


def inject(kind: str, launcher_pid: int, deployment: str, rng: random.Random | None = None) -> Fault:
    """Send the fault ``kind`` (one of :data:`FAULTS`) to the server under ``launcher_pid``."""
    rng = rng or random.Random()
    server = server_pid(launcher_pid)
    if server is None:
        raise RuntimeError(f"no tritonserver under pid {launcher_pid}")
    if kind == "segv-server":
        os.kill(server, signal.SIGSEGV)
        at = time.monotonic()
        _wait_dead(server)  # a dying server can still answer for a few ms: do not time those
        return Fault(kind, deployment, "tritonserver", server, at)
    stubs = _targets(kind, server, deployment)
    sig = signal.SIGSTOP if kind == "stop-stub" else signal.SIGKILL
    if not stubs:
        raise RuntimeError(f"{kind}: no running stub of {deployment} under tritonserver {server}")
    stub = rng.choice(stubs)
    os.kill(stub.pid, sig)
    return Fault(kind, deployment, stub.instance, stub.pid, time.monotonic())


def answers(client: TrtServeClient, deployment: str) -> bool:
    """One request through the client contract; True on a good answer."""
    try:
        if deployment == "embed":
            return client.embed("is the service back?", model=deployment).shape[0] == 1
        return client.classify("is the service back?", model=deployment)[0].label in client.labels
    except TrtServeError:
        return False


def time_to_answer(url: str, deployment: str, since: float, limit_s: float = 60.0,
                   protocol: str = "http", poll_s: float = 0.05) -> float | None:
    """Seconds from ``since`` (a monotonic time) to the first good answer of ``deployment``, or
    None if none came within ``limit_s``. Each poll is one request without retries; a request
    that hangs counts until it returns (the client timeout is the whole limit)."""
    deadline = since + limit_s
    with TrtServeClient(url, protocol=protocol, timeout_s=limit_s) as client:
        while time.monotonic() < deadline:
            if answers(client, deployment):
                return time.monotonic() - since
            time.sleep(poll_s)
    return None
