"""The embedded Triton server: the real ``tritonserver`` binary shipped in ``nvidia-pytriton``.

Set-up follows the verified recipe (../shared/ENVIRONMENT.md): the Python-backend stub for the
running Python version is placed beside ``libtriton_python.so``; LD_LIBRARY_PATH names the
wheel's bundled libraries and the folder holding ``libpython3.X.so.1.0``; the venv's ``bin`` is
first on PATH because the stub runs the first ``python3`` it finds there.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import trtserve_contract as contract
from trtserve_contract.boards import board_directory, remove_stale_boards

from .deployments import TASK_INPUTS, Deployment, discover
from .processes import release_regions, stubs_of

log = logging.getLogger(__name__)

#: The header that carries the key of the restricted model-repository API (load/unload/index).
ADMIN_HEADER = "admin-key"


class ServerError(RuntimeError):
    """The embedded server could not be set up or did not become ready."""


@dataclass(frozen=True)
class TritonInstall:
    binary: Path
    libs: Path
    backends: Path

    @classmethod
    def locate(cls, root: str | Path | None = None) -> "TritonInstall":
        """The tritonserver of ``nvidia-pytriton``, or of an install at ``root`` (or
        ``$TRTSERVE_TRITON_ROOT``): ``bin/tritonserver``, ``lib/``, ``backends/`` as in the NGC
        Triton image's /opt/tritonserver, whose Python backend already has its stub."""
        root = root or os.environ.get("TRTSERVE_TRITON_ROOT")
        if root:
            root = Path(root)
            install = cls(binary=root / "bin" / "tritonserver", libs=root / "lib", backends=root / "backends")
            for path in (install.binary, install.backends / "python" / "triton_python_backend_stub"):
                if not path.exists():
                    raise ServerError(f"no Triton install at {root}: {path} is missing")
            return install
        try:
            import pytriton
        except ImportError as e:
            raise ServerError("nvidia-pytriton is not installed; run `make venv` (it brings tritonserver)") from e
        root = Path(pytriton.__file__).parent / "tritonserver"
        libs = Path(pytriton.__file__).parent.parent / "nvidia_pytriton.libs"
        install = cls(binary=root / "bin" / "tritonserver", libs=libs, backends=root / "backends")
        for path in (install.binary, install.libs, install.backends / "python"):
            if not path.exists():
                raise ServerError(f"incomplete nvidia-pytriton install: {path} is missing")
        return install

    def prepare_python_backend(self) -> None:
        """Put the stub for the stubs' Python version into backends/python (idempotent); an
        install without per-version stubs (the NGC image) keeps its own."""
        if not (self.backends.parent / "python_backend_stubs").is_dir():
            return
        version = stub_python_version()
        stub = self.backends.parent / "python_backend_stubs" / version / "triton_python_backend_stub"
        if not stub.exists():
            raise ServerError(f"nvidia-pytriton has no Python-backend stub for Python {version}")
        target = self.backends / "python" / "triton_python_backend_stub"
        if not target.exists() or target.stat().st_size != stub.stat().st_size:
            shutil.copy2(stub, target)
        for exe in (target, self.binary):
            exe.chmod(exe.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        libdirs = [str(self.libs), sysconfig.get_config_var("LIBDIR") or ""]
        if env.get("LD_LIBRARY_PATH"):
            libdirs.append(env["LD_LIBRARY_PATH"])
        env["LD_LIBRARY_PATH"] = os.pathsep.join(d for d in libdirs if d)
        # The stub ignores PYTHONPATH and runs the first python3 on PATH: make it this venv's
        # (or TRTSERVE_STUB_PYTHON's).
        env["PATH"] = os.pathsep.join([str(stub_python().parent), env.get("PATH", "")])
        env.setdefault("TOKENIZERS_PARALLELISM", "false")
        return env


def stub_python() -> Path:
    """The Python whose environment the Python-backend stubs run in.

    This interpreter's, unless ``TRTSERVE_STUB_PYTHON`` names another python3 of the same
    version: the models' environment can then differ from the launcher's (on the GPU machine the
    stubs need numpy < 2 while the image's transformers needs numpy 2).
    """
    return Path(os.environ.get("TRTSERVE_STUB_PYTHON") or sys.executable)


def stub_python_version() -> str:
    """"3.X" of :func:`stub_python` (its stub binary is the one for that version)."""
    python = stub_python()
    if python == Path(sys.executable):
        return f"{sys.version_info.major}.{sys.version_info.minor}"
    try:
        out = subprocess.run([str(python), "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                             capture_output=True, text=True, timeout=60, check=True)
    except (OSError, subprocess.SubprocessError) as e:
        raise ServerError(f"TRTSERVE_STUB_PYTHON={python} does not run: {e}") from e
    return out.stdout.strip()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class Ports:
    http: int = 8000
    grpc: int = 8001
    metrics: int = 8002

    @classmethod
    def free(cls) -> "Ports":
        """Three distinct free ports: all three sockets stay bound until all are picked (one
        closed before the next bind may be handed out again: it was, for gRPC and metrics)."""
        with contextlib.ExitStack() as stack:
            socks = [stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) for _ in range(3)]
            for s in socks:
                s.bind(("127.0.0.1", 0))
            return cls(*(s.getsockname()[1] for s in socks))


def new_admin_key() -> str:
    """A random key for the restricted model-repository API (one per launcher)."""
    return secrets.token_urlsafe(24)


@dataclass
class EmbeddedServer:
    """A tritonserver child process bound to 127.0.0.1; use as a context manager.

    ``admin_key`` turns on explicit model control (every model loaded at start, then
    loadable/unloadable one by one, as the supervisor does to restore a model) with the
    model-repository API of HTTP and gRPC restricted to requests that carry this key in the
    ``admin-key`` header; without it the repository API answers 403. The key is never logged;
    it is in tritonserver's command line (Triton reads its options from nowhere else), readable
    on this host only, and the server listens on loopback only.
    """

    model_repository: Path
    ports: Ports = field(default_factory=Ports)
    log_path: Path | None = None
    extra_args: Sequence[str] = ()
    #: Triton's --rate-limit: "execution_count" honours instance priorities; "off" (Triton's
    #: default) lets idle instances take requests in turn
    rate_limit: str = "execution_count"
    host: str = "127.0.0.1"
    process: subprocess.Popen | None = None
    admin_key: str | None = field(default=None, repr=False)
    #: a Triton install other than nvidia-pytriton's (see :meth:`TritonInstall.locate`)
    triton_root: Path | None = None
    #: the Python-backend stubs' shared-memory regions seen (at ready and at stop): unlinked once
    #: the server is gone, since tritonserver leaves them in /dev/shm when it is killed (with the
    #: busy boards of servers that are gone, trtserve_contract.boards)
    _regions: set[str] = field(default_factory=set, repr=False, init=False)

    def command(self, install: TritonInstall) -> list[str]:
        control = []
        if self.admin_key:
            control = [
                "--model-control-mode=explicit", "--load-model=*",
                f"--http-restricted-api=model-repository:{ADMIN_HEADER}={self.admin_key}",
                f"--grpc-restricted-protocol=model-repository:{ADMIN_HEADER}={self.admin_key}",
            ]
        return [
            str(install.binary),
            f"--model-repository={Path(self.model_repository).resolve()}",
            f"--backend-directory={install.backends}",
            f"--http-address={self.host}", f"--http-port={self.ports.http}",
            f"--grpc-address={self.host}", f"--grpc-port={self.ports.grpc}",
            f"--metrics-address={self.host}", f"--metrics-port={self.ports.metrics}",
            "--disable-auto-complete-config",
            "--strict-readiness=true",
            "--exit-on-error=true",
            "--exit-timeout-secs=10",  # idle keep-alive clients must not stall shutdown for 30 s
            # instance groups' rate_limiter priorities pick the instance (one-model deployments:
            # one preferred instance, trtserve_build.stages.triton_config.preferred_instances)
            f"--rate-limit={self.rate_limit}",
            *control,
            *self.extra_args,
        ]

    def start(self) -> "EmbeddedServer":
        if not Path(self.model_repository).is_dir():
            raise ServerError(f"model repository {self.model_repository} does not exist; run `make engines`")
        install = TritonInstall.locate(self.triton_root)
        install.prepare_python_backend()
        # a restart appends: the log of the server that failed is the evidence
        out = open(self.log_path, "ab" if self.process is not None else "wb") if self.log_path else None
        self.process = subprocess.Popen(
            self.command(install),
            env=install.environment(),
            stdout=out or None,
            stderr=subprocess.STDOUT if out else None,
            start_new_session=True,  # own process group: stop() reaps the stubs too
            preexec_fn=_terminate_with_parent,
        )
        if out:
            out.close()
        return self

    @property
    def http_url(self) -> str:
        return f"{self.host}:{self.ports.http}"

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.ports.grpc}"

    def _http(self, method: str, path: str, body: dict | None = None, timeout: float = 5.0):
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"}
        if self.admin_key and path.startswith("/v2/repository"):
            headers[ADMIN_HEADER] = self.admin_key
        req = urllib.request.Request(f"http://{self.http_url}{path}", data=data, method=method, headers=headers)
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            payload = resp.read()
            return json.loads(payload) if payload else None

    def model_configs(self, ready_only: bool = True) -> dict[str, dict]:
        """{name: JSON config} of the repository's (ready) models."""
        configs = {}
        for entry in self._http("POST", "/v2/repository/index", {}) or []:
            if ready_only and entry.get("state") != "READY":
                continue
            configs[entry["name"]] = self._http("GET", f"/v2/models/{entry['name']}/config")
        return configs

    def deployments(self) -> list[Deployment]:
        """The ready models that honour the client contract, with the models behind each."""
        return discover(self.model_configs())

    def text_models(self) -> list[str]:
        """Names of the ready deployments (models with a task's string inputs and outputs)."""
        return [d.name for d in self.deployments()]

    def load_model(self, name: str, timeout: float = 60.0) -> None:
        """Load (or reload) ``name`` through the repository API (needs ``admin_key``)."""
        self._http("POST", f"/v2/repository/models/{name}/load", {}, timeout=timeout)

    def unload_model(self, name: str, timeout: float = 60.0) -> None:
        self._http("POST", f"/v2/repository/models/{name}/unload", {}, timeout=timeout)

    def infer_text(self, model: str, texts: Sequence[str], timeout: float = 30.0,
                   inputs: Sequence[str] = ("TEXT",)) -> dict:
        """``texts`` in each of ``inputs`` (a question-answering deployment takes QUESTION and CONTEXT)."""
        body = {"inputs": [{"name": name, "shape": [len(texts), 1], "datatype": "BYTES", "data": list(texts)}
                           for name in inputs]}
        return self._http("POST", f"/v2/models/{model}/infer", body, timeout=timeout)

    def generate_once(self, model: str, prompt: str, timeout: float = 30.0) -> dict:
        """One token from a ``generate`` deployment through Triton's HTTP ``/generate`` endpoint
        (``"stream": false``: the decoupled model answers once)."""
        body = {contract.PROMPT: prompt, contract.MAX_NEW_TOKENS: 1, "stream": False}
        return self._http("POST", f"/v2/models/{model}/generate", body, timeout=timeout)

    def answer_once(self, deployment: Deployment, timeout: float = 30.0) -> dict:
        """A real inference of ``deployment`` in its task's form (what :meth:`wait_ready` sends)."""
        if deployment.task == contract.GENERATION_TASK:
            return self.generate_once(deployment.name, "readiness check", timeout=timeout)
        return self.infer_text(deployment.name, ["readiness check"], inputs=sorted(TASK_INPUTS[deployment.task]),
                               timeout=timeout)

    def wait_ready(self, timeout_s: float = 120.0, abort_if: Callable[[], str | None] | None = None) -> list[str]:
        """Wait until every deployment answers a real inference in its task's form (health alone
        can lie); their names.

        ``abort_if`` is asked between polls; a reason it returns ends the wait with a
        :class:`ServerError` (the supervisor's: a stub stopped while the models load)."""
        deadline = time.monotonic() + timeout_s
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise ServerError(f"tritonserver exited with code {self.process.returncode} before it was ready"
                                  + (f"; see {self.log_path}" if self.log_path else ""))
            reason = abort_if() if abort_if else None
            if reason:
                raise ServerError(f"tritonserver will not become ready: {reason}")
            try:
                if self._http("GET", "/v2/health/ready", timeout=2.0) is None:
                    deployments = self.deployments()
                    if deployments:
                        for deployment in deployments:
                            self.answer_once(deployment, timeout=max(1.0, min(30.0, deadline - time.monotonic())))
                        self._note_regions()
                        return [d.name for d in deployments]
            except (urllib.error.URLError, ConnectionError, OSError, ValueError) as e:
                last_error = e
            time.sleep(0.25)
        raise ServerError(f"tritonserver not ready after {timeout_s:.0f}s (last error: {last_error})"
                          + (f"; see {self.log_path}" if self.log_path else ""))

    def stop(self, grace_s: float = 20.0) -> int | None:
        """SIGTERM the server's process group, then SIGKILL after ``grace_s``; returns the exit code."""
        proc = self.process
        if proc is None:
            return None
        self._note_regions()
        if proc.poll() is None:
            _signal_group(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                log.warning("tritonserver ignored SIGTERM for %.0fs; killing", grace_s)
        # Stubs live in the same process group: make sure nothing is left behind.
        _signal_group(proc.pid, signal.SIGKILL)
        proc.wait()
        self._release_regions()
        return proc.returncode

    def kill(self) -> int | None:
        """SIGKILL the server's whole process group at once (a broken server need not drain)."""
        proc = self.process
        if proc is None:
            return None
        self._note_regions()
        _signal_group(proc.pid, signal.SIGKILL)
        proc.wait()
        self._release_regions()
        return proc.returncode

    def _note_regions(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self._regions.update(st.shm_region for st in stubs_of(self.process.pid) if st.shm_region)

    def _release_regions(self) -> None:
        release_regions(self._regions)
        self._regions.clear()
        remove_stale_boards(board_directory())

    def __enter__(self) -> "EmbeddedServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


_PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """Ask Linux to send ``sig`` to this process when its parent dies (no-op elsewhere)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    except OSError:
        pass


def _terminate_with_parent() -> None:
    # Runs in the child between fork and exec: if whoever started tritonserver is killed
    # (even with SIGKILL), tritonserver gets SIGTERM and shuts its stubs down.
    die_with_parent(signal.SIGTERM)


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass
