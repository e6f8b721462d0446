"""The `make serve` foreground process: ready only after a real inference, clean stop on signals."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from trtserve_server.embedded import Ports


def _processes_mentioning(needle: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if needle in cmdline:
            pids.append(int(entry.name))
    return pids


def _start(repository: Path, ports: Ports, *extra: str) -> subprocess.Popen:
    from trtserve_server.embedded import free_port

    return subprocess.Popen(
        [sys.executable, "-m", "trtserve_server.cli", "serve", "--model-repository", str(repository),
         "--http-port", str(ports.http), "--grpc-port", str(ports.grpc), "--metrics-port", str(ports.metrics),
         "--status-port", str(free_port()), *extra],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def _wait_for_banner(proc: subprocess.Popen, timeout_s: float = 180) -> str:
    seen = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line and proc.poll() is not None:
            break
        seen.append(line)
        if line.startswith("trtserve: Triton is serving"):
            return line
    proc.kill()
    raise AssertionError("no ready banner; output:\n" + "".join(seen[-40:]))


@pytest.mark.parametrize("signum,extra", [(signal.SIGTERM, ()), (signal.SIGINT, ("--no-supervise",))],
                         ids=["SIGTERM-supervised", "SIGINT-no-supervise"])
def test_serve_answers_then_stops_cleanly(cpu_repository, tmp_path, signum, extra):
    import tritonclient.http as httpclient

    from trtserve_client import TrtServeClient

    repo = tmp_path / f"repo-{signum.name}"
    repo.symlink_to(cpu_repository, target_is_directory=True)  # a unique path to look for afterwards
    ports = Ports.free()
    proc = _start(repo, ports, *extra)
    banner = _wait_for_banner(proc)
    from loadtest.faults import server_pid

    triton = server_pid(proc.pid)
    assert triton is not None
    explicit = b"--model-control-mode=explicit" in Path(f"/proc/{triton}/cmdline").read_bytes()
    assert explicit == (not extra)  # supervised by default: the supervisor reloads models one by one
    assert "embed" in banner and "sentiment" in banner
    assert _processes_mentioning(str(repo)), "tritonserver should be running"

    with TrtServeClient(f"127.0.0.1:{ports.grpc}", protocol="grpc") as client:
        assert client.classify("a gripping, beautifully acted film")[0].label == "positive"
    client = httpclient.InferenceServerClient(f"127.0.0.1:{ports.http}")
    assert client.is_server_ready()
    client.close()

    proc.send_signal(signum)
    assert proc.wait(timeout=60) == 0
    deadline = time.monotonic() + 10
    while _processes_mentioning(str(repo)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _processes_mentioning(str(repo)), "stray tritonserver/stub processes after stop"


def test_serve_fails_clearly_without_repository(tmp_path):
    proc = _start(tmp_path / "missing", Ports.free())
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert "does not exist" in out and "make engines" in out


def test_killed_launcher_takes_triton_down(cpu_repository, tmp_path):
    """Even SIGKILL of the launcher (or of `make` above it) leaves no orphaned tritonserver."""
    repo = tmp_path / "repo-kill"
    repo.symlink_to(cpu_repository, target_is_directory=True)
    proc = _start(repo, Ports.free())
    _wait_for_banner(proc)
    proc.kill()
    proc.wait(timeout=30)
    deadline = time.monotonic() + 30
    while _processes_mentioning(str(repo)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _processes_mentioning(str(repo)), "tritonserver outlived its launcher"
