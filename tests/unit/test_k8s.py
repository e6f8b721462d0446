"""deploy/k8s/, validated offline: the Kubernetes JSON schemas shipped in the PyPI wheel
``kubernetes-validate`` (strict: unknown fields are errors), then checked against each other,
the images and the compose file. No cluster runs here; deploy/README.md gives the steps."""
from __future__ import annotations

import copy
import re
import tomllib

import kubernetes_validate
import pytest
import yaml

from trtserve_build.stages.repository import STAMP_FILE

from ..conftest import REPO_ROOT

K8S = REPO_ROOT / "deploy" / "k8s"
KUBERNETES_VERSION = "1.31.0"
MANIFESTS = sorted(p for p in K8S.glob("*.yaml") if not p.name.endswith("-values.yaml"))
PROBE = ["python3", "/opt/trtserve/healthcheck.py", "--url", "127.0.0.1:8000"]


def _documents() -> list[dict]:
    return [doc for path in MANIFESTS for doc in yaml.safe_load_all(path.read_text()) if doc]


@pytest.fixture(scope="module")
def objects() -> dict[str, dict]:
    out = {}
    for doc in _documents():
        out[f"{doc['kind']}/{doc['metadata']['name']}"] = doc
    return out


@pytest.mark.parametrize("doc", _documents(), ids=lambda d: f"{d['kind']}/{d['metadata']['name']}")
def test_manifest_is_valid_kubernetes(doc):
    kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_validation_catches_mistakes(objects):
    """Not vacuous: a misspelt field and a wrong type are refused."""
    bad = copy.deepcopy(objects["Deployment/trtserve-triton"])
    bad["spec"]["replica"] = 2
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, KUBERNETES_VERSION, strict=True)
    bad = copy.deepcopy(objects["PodDisruptionBudget/trtserve-triton"])
    bad["spec"]["minAvailable"] = {"pods": 1}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, KUBERNETES_VERSION, strict=True)


def test_everything_in_one_namespace(objects):
    for name, obj in objects.items():
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] == "trtserve", name


def _release() -> str:
    [release] = set(re.findall(r"\$\{TRITON_RELEASE:-([^}]+)\}", (REPO_ROOT / "docker-compose.yml").read_text()))
    return release


def test_triton_replicas_one_gpu_each_with_real_inference_probes(objects):
    deployment = objects["Deployment/trtserve-triton"]
    pod = deployment["spec"]["template"]["spec"]
    [triton] = pod["containers"]
    assert deployment["spec"]["replicas"] >= 2
    assert triton["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert triton["image"].endswith(f"/trtserve-triton:gpu-{_release()}")
    assert pod["securityContext"]["runAsNonRoot"] is True
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        probe = triton[kind]
        command = probe["exec"]["command"]
        assert command[:4] == PROBE, f"{kind} sends a real inference (deploy/healthcheck.py)"
        assert float(command[command.index("--deadline") + 1]) < probe["timeoutSeconds"], kind
    env = {e["name"]: e["value"] for e in triton["env"]}
    specs = [tomllib.loads(p.read_text()) for p in (REPO_ROOT / "deployments").glob("*.toml")]
    names = {s["name"] for s in specs if s["task"] != "generation"}  # the Job runs `make engines GENERATE=0`
    assert set(env["TRTSERVE_MODELS"].split(",")) == names
    mounts = {m["mountPath"]: m for m in triton["volumeMounts"]}
    assert mounts["/models"]["readOnly"] is True and "/dev/shm" in mounts
    # The image serves /models/gpu; the pods start once the Job published that repository.
    [wait] = pod["initContainers"]
    assert f"/models/gpu/{STAMP_FILE}" in " ".join(wait["command"])
    ports = {p["name"]: p["containerPort"] for p in triton["ports"]}
    assert ports == {"http": 8000, "grpc": 8001, "metrics": 8002}


def test_service_and_pdb_select_the_triton_pods(objects):
    labels = objects["Deployment/trtserve-triton"]["spec"]["template"]["metadata"]["labels"]
    service = objects["Service/trtserve-triton"]["spec"]
    assert service["selector"].items() <= labels.items()
    [triton] = objects["Deployment/trtserve-triton"]["spec"]["template"]["spec"]["containers"]
    container_ports = {p["name"] for p in triton["ports"]}
    assert {p["targetPort"] for p in service["ports"]} == container_ports
    pdb = objects["PodDisruptionBudget/trtserve-triton"]["spec"]
    assert pdb["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["minAvailable"] >= 1


def test_hpa_scales_on_tritons_queue_time_through_the_prometheus_adapter(objects):
    hpa = objects["HorizontalPodAutoscaler/trtserve-triton"]["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "trtserve-triton"}
    assert hpa["minReplicas"] >= objects["PodDisruptionBudget/trtserve-triton"]["spec"]["minAvailable"] + 1
    [metric] = hpa["metrics"]
    name = metric["pods"]["metric"]["name"]
    values = yaml.safe_load((K8S / "prometheus-adapter-values.yaml").read_text())
    [rule] = values["rules"]["custom"]
    assert rule["name"]["as"] == name
    query = rule["metricsQuery"]
    assert "nv_inference_queue_duration_us" in query and "nv_inference_request_success" in query
    assert query.count("(") == query.count(")")
    # Triton's metric names, as the embedded server exports them (loadtest/triton_metrics.py).
    metrics = (REPO_ROOT / "loadtest" / "triton_metrics.py").read_text()
    assert "nv_inference_queue_duration_us" in metrics and "nv_inference_request_success" in metrics


def test_engines_job_builds_with_the_servers_tensorrt_on_the_same_gpu(objects):
    job = objects["Job/trtserve-engines"]["spec"]["template"]["spec"]
    [engines] = job["containers"]
    assert engines["image"].endswith(f"/trtserve-engines:gpu-{_release()}")
    assert engines["command"] == ["make", "engines", "VARIANT=gpu", "PY=python3", "GENERATE=0"]
    assert engines["resources"]["limits"]["nvidia.com/gpu"] == 1
    serving = objects["Deployment/trtserve-triton"]["spec"]["template"]["spec"]
    assert job["nodeSelector"] == serving["nodeSelector"], "plans are built for the serving GPU's architecture"
    claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in job["volumes"]}
    mounts = {m["name"]: m["mountPath"] for m in engines["volumeMounts"]}
    served = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in serving["volumes"] if "persistentVolumeClaim" in v}
    [triton] = serving["containers"]
    triton_mounts = {m["name"]: m["mountPath"] for m in triton["volumeMounts"]}
    repo_claim = next(c for n, c in claims.items() if mounts[n].endswith("/model_repository"))
    assert repo_claim in served.values() and triton_mounts[next(n for n, c in served.items() if c == repo_claim)] == "/models"
    pvc = objects[f"PersistentVolumeClaim/{repo_claim}"]["spec"]
    assert pvc["accessModes"] == ["ReadWriteMany"], "replicas on several nodes read it"
    dockerfile = (REPO_ROOT / "deploy" / "engines.gpu.Dockerfile").read_text()
    assert "COPY build/trtserve_build/" in dockerfile, "the Job's image carries the build code"
