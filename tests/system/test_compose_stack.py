"""The cpu compose stack, for real: built, started, called, load-tested, scraped, restarted, removed.

Against the real Docker daemon: the images are built (from the public Python base image, or
where no registry is reachable from the one deploy/offline/images.sh makes from Debian
packages; pinned wheels from the host's wheelhouse when it can serve them), `docker compose up
--wait` brings the cpu stack up (engines, then triton, healthy only after real inferences),
every deployment is called from the host over HTTP and gRPC with the client library, the
loadtest profile runs headless with its SLO gate, Prometheus (monitoring profile) is asked for
Triton's success counters of every model, triton is restarted and serves again, and `down -v`
leaves nothing behind.

Skipped, with the reason, only when no Docker daemon can be reached; .ci/run sets
TRTSERVE_REQUIRE_DOCKER=1, which turns that skip into a failure.
"""
from __future__ import annotations

import functools
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from ..compose_tools import REQUIRE_DOCKER, compose_v2, docker_unavailable
from ..conftest import REPO_ROOT

# `functional`: these start the real Triton too (in containers), so `make unit` leaves them out.
pytestmark = [pytest.mark.system, pytest.mark.functional, pytest.mark.timeout(2400)]  # the first test builds the images

CPU_ENV = REPO_ROOT / "deploy" / "cpu.env"
PUBLIC_BASE = "python:3.11-slim-bookworm"
WHEELS_PORT = 47311
PROFILES = ("--profile", "loadtest", "--profile", "monitoring")
#: How long the stack took (images, up --wait, the whole module), for the record: git-ignored.
TIMINGS = REPO_ROOT / "results" / "system" / "compose_stack_timings.json"
TEXTS = ["a gripping, beautifully acted film", "a dull, lifeless and painfully boring mess"]


def _log(message: str) -> None:
    print(f"[compose-stack {time.strftime('%H:%M:%S')}] {message}", flush=True)


@pytest.fixture(scope="module")
def docker() -> None:
    reason = docker_unavailable()
    if reason:
        if os.environ.get(REQUIRE_DOCKER) == "1":
            pytest.fail(f"{REQUIRE_DOCKER}=1 but {reason}")
        pytest.skip(f"no Docker daemon: {reason}")


def _run(cmd: list[str], *, env=None, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    if check:
        assert proc.returncode == 0, f"{' '.join(cmd)} -> {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def _base_images() -> dict[str, str]:
    """BASE_IMAGE/PROMETHEUS_IMAGE: given, the public ones when they can be pulled, else made here."""
    if os.environ.get("BASE_IMAGE"):
        return {k: os.environ[k] for k in ("BASE_IMAGE", "PROMETHEUS_IMAGE") if os.environ.get(k)}
    have = subprocess.run(["docker", "image", "inspect", PUBLIC_BASE], capture_output=True, timeout=60).returncode == 0
    if have or subprocess.run(["docker", "pull", "-q", PUBLIC_BASE], capture_output=True, timeout=600).returncode == 0:
        return {}
    _log("no registry reachable: base and Prometheus images from Debian packages (deploy/offline/images.sh)")
    out = _run(["bash", str(REPO_ROOT / "deploy" / "offline" / "images.sh")], timeout=900).stdout
    return dict(re.findall(r"(BASE_IMAGE|PROMETHEUS_IMAGE)=(\S+)", out))


def _docker_gateway() -> str | None:
    """The host's address on Docker's default bridge, which build containers reach."""
    if not shutil.which("ip"):
        return None
    out = subprocess.run(["ip", "-4", "-o", "addr", "show", "docker0"], capture_output=True, text=True).stdout
    match = re.search(r"inet (\d+\.\d+\.\d+\.\d+)/", out)
    return match.group(1) if match else None


class _Wheelhouse:
    """deploy/wheels served over HTTP on the bridge while the images build (WHEELS_URL)."""

    def __init__(self) -> None:
        self.url, self._server = None, None
        gateway = _docker_gateway()
        proc = subprocess.run(["bash", str(REPO_ROOT / "deploy" / "offline" / "wheelhouse.sh"), sys.executable],
                              capture_output=True, text=True, timeout=900)
        if gateway is None or proc.returncode != 0:
            _log(f"no wheelhouse (gateway {gateway}, wheelhouse.sh: {proc.stderr.strip()[-300:]}): builds use PyPI")
            return
        handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(REPO_ROOT / "deploy" / "wheels"))
        handler.log_message = lambda *a: None
        try:  # a fixed address keeps WHEELS_URL, and so the builder's layer cache, the same across runs
            self._server = http.server.ThreadingHTTPServer((gateway, WHEELS_PORT), handler)
        except OSError:
            self._server = http.server.ThreadingHTTPServer((gateway, 0), handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        self.url = f"http://{gateway}:{self._server.server_address[1]}/"

    def close(self) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()


class Stack:
    """`docker compose --env-file deploy/cpu.env` for one project with free ports."""

    def __init__(self, env: dict[str, str]) -> None:
        self.project = f"trtserve-test-{os.getpid()}"
        self.env = env
        self.compose = [str(compose_v2()), "--project-directory", str(REPO_ROOT), "-f", str(REPO_ROOT / "docker-compose.yml"),
                        "--env-file", str(CPU_ENV), "-p", self.project]

    def __call__(self, *args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
        return _run([*self.compose, *args], env=self.env, timeout=timeout, check=check)

    def port(self, name: str) -> int:
        return int(self.env[name])

    def container(self, service: str) -> str:
        return self("ps", "-q", service).stdout.strip()

    def health(self, service: str) -> str:
        out = _run(["docker", "inspect", "-f", "{{.State.Health.Status}}", self.container(service)], check=False)
        return out.stdout.strip()

    def logs(self) -> str:
        return self("--profile", "loadtest", "--profile", "monitoring", "logs", "--no-color", "--tail", "60",
                    check=False).stdout[-6000:]


@pytest.fixture(scope="module")
def stack(docker) -> Stack:
    from trtserve_server.embedded import Ports, free_port

    ports = Ports.free()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TRTSERVE_VARIANT", "TRTSERVE_RUNTIME", "COMPOSE_"))}
    env.update(HTTP_PORT=str(ports.http), GRPC_PORT=str(ports.grpc), METRICS_PORT=str(ports.metrics),
               PROMETHEUS_PORT=str(free_port()), LOADTEST_RUN=f"compose-test-{os.getpid()}",
               LOADTEST_USERS="2", LOADTEST_SPAWN_RATE="2", LOADTEST_DURATION="10s",
               SLO_P95_MS="10000", SLO_FAILURE_RATE="0")
    if subprocess.run(["docker", "buildx", "version"], capture_output=True).returncode != 0:
        env["DOCKER_BUILDKIT"] = "0"  # the legacy builder: no buildx plugin
    started = time.monotonic()
    env.update(_base_images())
    stack = Stack(env)
    wheels = _Wheelhouse()
    try:
        build_env = dict(env, WHEELS_URL=wheels.url or "")
        _run([*stack.compose, "--profile", "loadtest", "build"], env=build_env, timeout=1500)
    finally:
        wheels.close()
    docker_version = _run(["docker", "version", "--format", "{{.Server.Version}}"], check=False).stdout.strip()
    timings = {"cpu_cores": os.cpu_count(), "docker": docker_version, "compose": str(compose_v2()),
               "base_image": env.get("BASE_IMAGE", PUBLIC_BASE), "wheels": wheels.url or "PyPI",
               "images_built_s": round(time.monotonic() - started)}
    _log(f"images built in {timings['images_built_s']} s (base {timings['base_image']}, wheels {timings['wheels']})")
    try:
        up = time.monotonic()
        proc = stack("up", "-d", "--wait", "--wait-timeout", "900", timeout=1000, check=False)
        assert proc.returncode == 0, f"up --wait failed:\n{proc.stderr[-3000:]}\n{stack.logs()}"
        timings["up_wait_s"] = round(time.monotonic() - up)
        _log(f"cpu stack up and healthy in {timings['up_wait_s']} s")
        yield stack
    finally:
        stack(*PROFILES, "down", "-v", "--remove-orphans", "--timeout", "20", check=False)
        timings["total_s"] = round(time.monotonic() - started)
        TIMINGS.parent.mkdir(parents=True, exist_ok=True)
        TIMINGS.write_text(json.dumps(dict(timings, finished_utc=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())), indent=2) + "\n")


def _client(stack: Stack, protocol: str):
    from trtserve_client import TrtServeClient

    port = stack.port("GRPC_PORT" if protocol == "grpc" else "HTTP_PORT")
    return TrtServeClient(f"127.0.0.1:{port}", protocol=protocol, timeout_s=30)


def _served_models() -> list[str]:
    repo = REPO_ROOT / "model_repository" / "cpu"
    return sorted(p.parent.name for p in repo.glob("*/config.pbtxt"))


def test_stack_is_up_as_designed(stack):
    ps = [json.loads(line) for line in stack("ps", "-a", "--format", "json").stdout.splitlines() if line.strip()]
    state = {c["Service"]: c for c in ps}
    assert state["engines"]["State"] == "exited" and state["engines"]["ExitCode"] == 0
    assert state["triton"]["State"] == "running" and stack.health("triton") == "healthy"
    user = _run(["docker", "exec", stack.container("triton"), "id", "-u"]).stdout.strip()
    assert user != "0", "the serving container runs unprivileged"
    published = _run(["docker", "port", stack.container("triton")]).stdout.split()
    assert all(p.startswith("127.0.0.1:") for p in published if ":" in p), published


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_every_deployment_answers_from_the_host(stack, protocol):
    with _client(stack, protocol) as client:
        client.wait_ready(["sentiment", "embed"], timeout_s=60)
        results = client.classify(TEXTS)
        assert [r.label for r in results] == ["positive", "negative"]
        for r in results:
            assert set(r.probabilities) == {"negative", "positive"}
            assert abs(sum(r.probabilities.values()) - 1) < 1e-5 and r.score == max(r.probabilities.values())
        vectors = client.embed(TEXTS)
        assert vectors.shape == (2, 384) and vectors.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
        assert client.model_max_batch_size("sentiment") >= 64 and client.model_max_batch_size("embed") >= 64


def _model_io(stack: Stack, protocol: str, model: str) -> dict:
    """{"input"|"output": {name: (data_type, dims)}} of a model, as the server reports it."""
    if protocol == "grpc":
        import tritonclient.grpc as tc
        from google.protobuf.json_format import MessageToDict

        with tc.InferenceServerClient(f"127.0.0.1:{stack.port('GRPC_PORT')}") as client:
            config = MessageToDict(client.get_model_config(model).config, preserving_proto_field_name=True)
    else:
        import tritonclient.http as tc

        with tc.InferenceServerClient(f"127.0.0.1:{stack.port('HTTP_PORT')}") as client:
            config = client.get_model_config(model)
    return {side: {e["name"]: (e["data_type"], [int(d) for d in e["dims"]]) for e in config[side]}
            for side in ("input", "output")}


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_the_ensemble_contract(stack, protocol):
    import trtserve_contract as contract

    assert _model_io(stack, protocol, "sentiment") == {
        "input": {contract.TEXT: ("TYPE_STRING", [1])},
        "output": {contract.LABEL: ("TYPE_STRING", [1]), contract.SCORE: ("TYPE_FP32", [1]),
                   contract.PROBABILITIES: ("TYPE_FP32", [2])}}
    assert _model_io(stack, protocol, "embed") == {
        "input": {contract.TEXT: ("TYPE_STRING", [1])}, "output": {contract.EMBEDDING: ("TYPE_FP32", [384])}}


def test_http_and_grpc_agree(stack):
    with _client(stack, "http") as http, _client(stack, "grpc") as grpc:
        np.testing.assert_allclose(http.embed(TEXTS), grpc.embed(TEXTS), atol=1e-6)
        assert [r.probabilities for r in http.classify(TEXTS)] == [r.probabilities for r in grpc.classify(TEXTS)]


def test_prometheus_scrapes_the_success_counter_of_every_model(stack):
    stack("--profile", "monitoring", "up", "-d", "--wait", "--wait-timeout", "120", "prometheus", timeout=300)
    from trtserve_build.core.spec import load_spec

    models = _served_models()
    for name in ("sentiment", "embed"):  # each deployment and the models behind it, as its topology serves it
        steps = {f"{name}_tokenizer", f"{name}_encoder", f"{name}_postprocess"}
        if load_spec(REPO_ROOT / "deployments" / f"{name}.toml").topology("cpu") == "single":
            assert name in models and not steps & set(models), models  # one Python model
        else:
            assert {name, *steps} <= set(models), models  # the ensemble and its three steps
    url = (f"http://127.0.0.1:{stack.port('PROMETHEUS_PORT')}/api/v1/query?query=nv_inference_request_success")
    deadline, seen = time.monotonic() + 90, {}
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                data = json.loads(response.read())
        except OSError:  # 503 or refused while Prometheus opens its storage (`up --wait`: running, not ready)
            time.sleep(2)
            continue
        assert data["status"] == "success"
        seen = {r["metric"]["model"]: float(r["value"][1]) for r in data["data"]["result"]}
        if all(seen.get(m, 0) > 0 for m in models):
            break
        time.sleep(2)
    assert all(seen.get(m, 0) > 0 for m in models), f"success counters in Prometheus: {seen}, models {models}"


def test_loadtest_profile_writes_its_report_to_the_host(stack):
    results = REPO_ROOT / "results" / "loadtest" / stack.env["LOADTEST_RUN"]
    shutil.rmtree(results, ignore_errors=True)
    # --no-deps: triton is up and healthy; without it compose would first re-run the one-shot
    # engines service, whose start-up competes with the load for this machine's two cores.
    proc = stack("--profile", "loadtest", "run", "--rm", "--no-deps", "-T", "loadtest", timeout=400, check=False)
    assert proc.returncode == 0, f"loadtest exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-2000:]}"
    summary = json.loads((results / "summary.json").read_text())
    assert summary["slo"]["passed"] and summary["slo"]["thresholds"]["failure_rate"] == 0
    assert summary["summary"]["requests"] > 0 and summary["summary"]["failures"] == 0
    assert (results / "report.html").stat().st_size > 0
    served = {row["model"] for row in summary["summary"].get("server", [])}
    assert {"sentiment", "embed"} <= served, "the report includes Triton's side of the same window"


def test_triton_restart_resumes_service(stack):
    stack("restart", "triton", timeout=120)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and stack.health("triton") != "healthy":
        time.sleep(2)
    assert stack.health("triton") == "healthy", stack.logs()
    with _client(stack, "grpc") as client:
        assert [r.label for r in client.classify(TEXTS)] == ["positive", "negative"]


def test_down_leaves_nothing_running(stack):
    stack(*PROFILES, "down", "-v", "--remove-orphans", "--timeout", "20", timeout=300)
    label = f"label=com.docker.compose.project={stack.project}"
    assert _run(["docker", "ps", "-a", "-q", "--filter", label]).stdout.strip() == ""
    assert _run(["docker", "volume", "ls", "-q", "--filter", label]).stdout.strip() == ""
    assert _run(["docker", "network", "ls", "-q", "--filter", label]).stdout.strip() == ""
