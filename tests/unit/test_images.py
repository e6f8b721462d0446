"""Image hygiene, offline: pinned requirements that agree with pyproject.toml, a small build
context, no secrets, an unprivileged serving user, one base image default everywhere."""
from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from ..conftest import REPO_ROOT

DEPLOY = REPO_ROOT / "deploy"
REQUIREMENTS = sorted((DEPLOY / "requirements").glob("*.txt"))
DOCKERFILES = sorted(DEPLOY.glob("*.Dockerfile")) + sorted((DEPLOY / "offline").glob("*.Dockerfile"))
PUBLIC_BASE = "python:3.11-slim-bookworm"


def _pyproject_requirements() -> dict[str, Requirement]:
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"]) + [r for extra in project["optional-dependencies"].values() for r in extra]
    out = {}
    for text in reqs:
        req = Requirement(text)
        if req.name != "trtserve":
            out[req.name.lower()] = req
    return out


def _pins(path: Path) -> list[Requirement]:
    lines = [line.split("#", 1)[0].strip() for line in path.read_text().splitlines()]
    return [Requirement(line) for line in lines if line]


def test_requirement_files_exist():
    names = {p.name for p in REQUIREMENTS}
    assert {"engines.txt", "serve-cpu.txt", "triton-gpu.txt", "locust.txt"} <= names


@pytest.mark.parametrize("path", REQUIREMENTS, ids=lambda p: p.name)
def test_requirements_are_exact_pins_that_agree_with_pyproject(path):
    project = _pyproject_requirements()
    for req in _pins(path):
        [spec] = list(req.specifier)
        assert spec.operator == "==", f"{path.name}: {req} is not an exact pin"
        version = Version(spec.version)
        ours = project.get(req.name.lower())
        if ours is None:
            continue  # a dependency of a dependency, pinned here (e.g. scipy for sentence-transformers)
        # The image's release must be one pyproject allows; where pyproject pins, the same one
        # (a local label such as +cpu names the build of that release).
        assert ours.specifier.contains(version, prereleases=True) or \
            ours.specifier.contains(Version(version.public), prereleases=True), f"{path.name}: {req} vs pyproject {ours}"
        assert req.extras <= ours.extras or not ours.extras, f"{path.name}: {req} vs pyproject {ours}"


def test_engines_pin_the_cpu_torch_build():
    torch = next(r for r in _pins(DEPLOY / "requirements" / "engines.txt") if r.name == "torch")
    assert str(torch.specifier).endswith("+cpu"), "PyPI's torch is the CUDA build; export needs the CPU one"
    gpu = (DEPLOY / "engines.gpu.Dockerfile").read_text()
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in gpu


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfiles_install_only_pinned_requirement_files(dockerfile):
    text = dockerfile.read_text().replace("\\\n", " ")
    for run in re.findall(r"^RUN (.*)$", text, flags=re.M):
        for install in re.findall(r"pip install ([^&;]*)", run):
            assert "-r /tmp/requirements.txt" in install and '"' not in install, \
                f"{dockerfile.name}: install from a pinned requirements file only: {install}"
        if "apt-get install" in run:
            assert "--no-install-recommends" in run and "rm -rf /var/lib/apt/lists" in run, run


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_no_secrets_in_images(dockerfile):
    text = dockerfile.read_text()
    for name in re.findall(r"^(?:ARG|ENV)\s+([A-Za-z_][A-Za-z0-9_]*)", text, flags=re.M):
        assert not re.search(r"PASSWORD|SECRET|TOKEN|API_KEY|CREDENTIAL", name, re.I), f"{dockerfile.name}: {name}"
    for source in re.findall(r"^COPY\s+(?!--from)(.+)\s+\S+$", text, flags=re.M):
        for item in source.split():
            assert item not in (".", "./", "*"), f"{dockerfile.name}: copies the whole context"
            assert not re.search(r"\.env$|\.pem$|\.key$|netrc|\.docker|\.ssh|\.cache|\.venv", item), item


@pytest.mark.parametrize("dockerfile", ["triton.cpu.Dockerfile", "triton.gpu.Dockerfile", "locust.Dockerfile"])
def test_serving_images_run_unprivileged(dockerfile):
    users = re.findall(r"^USER\s+(\S+)", (DEPLOY / dockerfile).read_text(), flags=re.M)
    assert users and users[-1] not in ("root", "0", "0:0"), f"{dockerfile}: last USER is {users}"


def _dockerignore() -> list[str]:
    lines = [line.strip() for line in (REPO_ROOT / ".dockerignore").read_text().splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def test_build_context_is_only_what_the_dockerfiles_copy():
    """.dockerignore excludes everything but the COPY sources: no .cache, .venv, model files."""
    rules = _dockerignore()
    assert rules[0] == "*", "allow-list: exclude everything first"
    allowed = [r[1:].rstrip("/") for r in rules if r.startswith("!")]
    for dockerfile in DOCKERFILES:
        if dockerfile.parent.name == "offline":
            continue  # built from deploy/offline/ itself
        text = dockerfile.read_text().replace("\\\n", " ")
        for source in re.findall(r"^COPY\s+(?!--from)(.+)\s+\S+$", text, flags=re.M):
            for item in source.split():
                assert any(item.rstrip("/") == a or item.startswith(a + "/") for a in allowed), \
                    f"{dockerfile.name}: COPY {item} is not in .dockerignore's allow-list"
                assert (REPO_ROOT / item).exists(), item
    for heavy in (".cache", ".venv", "model_repository", "results", ".git", "deploy/wheels"):
        assert not any(heavy == a or heavy.startswith(a + "/") or a.startswith(heavy) for a in allowed), heavy


def test_one_base_image_default():
    """BASE_IMAGE defaults to the public Debian-based Python 3.11 image in compose and every
    Dockerfile that takes it; the offline base is Debian bookworm with Python 3.11 too."""
    compose = (REPO_ROOT / "docker-compose.yml").read_text()
    assert f"${{BASE_IMAGE:-{PUBLIC_BASE}}}" in compose
    for dockerfile in DOCKERFILES:
        text = dockerfile.read_text()
        if dockerfile.parent.name == "offline" or "nvcr.io" in text:
            continue
        assert f"ARG BASE_IMAGE={PUBLIC_BASE}\nFROM ${{BASE_IMAGE}}" in text, dockerfile.name
    script = (DEPLOY / "offline" / "base-image.sh").read_text()
    assert 'SUITE="${SUITE:-bookworm}"' in script and "python3.11" in script.replace("libpython3.11", "python3.11")
    assert "docker import" in script and "debootstrap --variant=minbase" in script
