"""One supervised ``trtserve-server serve`` (as `make serve` runs it) for a whole test module:
started on free ports, its output pumped (the supervisor's events), ready at the banner, stopped
with SIGTERM and checked to leave no process behind. Shared by issue 15's fault tests and the
supervised ``generate`` tests."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import pytest

from loadtest.faults import descendants, still_running
from trtserve_server.embedded import Ports, free_port

READY_BANNER = "trtserve: Triton is serving"


class Supervised:
    """The running launcher: its process, ports, output lines and Triton log."""

    def __init__(self, proc: subprocess.Popen, ports: Ports, status_port: int, output: list[str], log: Path):
        self.proc, self.ports, self.status_port, self.output, self.log = proc, ports, status_port, output, log

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.ports.http}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.ports.grpc}"

    def status(self) -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.status_port}/status", timeout=5) as r:
            return json.loads(r.read())


def start_supervised(repository: Path, log: Path, timeout_s: float = 240) -> Supervised:
    ports, status_port = Ports.free(), free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "trtserve_server.cli", "serve", "--model-repository", str(repository),
         "--http-port", str(ports.http), "--grpc-port", str(ports.grpc), "--metrics-port", str(ports.metrics),
         "--status-port", str(status_port), "--log-file", str(log)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output: list[str] = []
    ready = threading.Event()

    def pump():
        for line in proc.stdout:
            output.append(line)
            if line.startswith(READY_BANNER):
                ready.set()

    threading.Thread(target=pump, daemon=True).start()
    if not ready.wait(timeout_s):
        proc.kill()
        pytest.fail("no ready banner:\n" + "".join(output[-40:]))
    return Supervised(proc, ports, status_port, output, log)


def stop_supervised(served: Supervised, may_be_dead: bool = False) -> None:
    """Keep the launcher's output beside the Triton log (the supervisor's events, for a failing
    run), then SIGTERM: it exits 0 and leaves no process. ``may_be_dead``: a test may have killed
    it on purpose."""
    (served.log.parent / "serve.out").write_text("".join(served.output))
    if may_be_dead and served.proc.poll() is not None:
        return
    tree = descendants(served.proc.pid)
    served.proc.send_signal(signal.SIGTERM)
    assert served.proc.wait(timeout=60) == 0
    assert not still_running(tree), "processes left after stop"
