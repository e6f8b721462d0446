"""Which Python the embedded server's Python-backend stubs run in (no server started here)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from trtserve_server.embedded import ServerError, TritonInstall, stub_python, stub_python_version

HERE = f"{sys.version_info.major}.{sys.version_info.minor}"


def install(tmp_path: Path) -> TritonInstall:
    return TritonInstall(binary=tmp_path / "tritonserver", libs=tmp_path / "libs", backends=tmp_path / "backends")


def test_default_is_this_interpreter(monkeypatch, tmp_path):
    monkeypatch.delenv("TRTSERVE_STUB_PYTHON", raising=False)
    assert stub_python() == Path(sys.executable) and stub_python_version() == HERE
    env = install(tmp_path).environment()
    assert env["PATH"].split(os.pathsep)[0] == str(Path(sys.executable).parent)
    assert str(tmp_path / "libs") in env["LD_LIBRARY_PATH"].split(os.pathsep)


def test_another_python_heads_path_and_picks_the_stub_version(monkeypatch, tmp_path):
    other = tmp_path / "stubenv" / "bin"
    other.mkdir(parents=True)
    (other / "python3").symlink_to(sys.executable)
    monkeypatch.setenv("TRTSERVE_STUB_PYTHON", str(other / "python3"))
    assert stub_python_version() == HERE  # asked of that interpreter, not assumed
    assert install(tmp_path).environment()["PATH"].split(os.pathsep)[0] == str(other)


def test_a_python_that_does_not_run_is_named(monkeypatch, tmp_path):
    monkeypatch.setenv("TRTSERVE_STUB_PYTHON", str(tmp_path / "nope" / "python3"))
    with pytest.raises(ServerError, match="TRTSERVE_STUB_PYTHON=.*nope/python3 does not run"):
        stub_python_version()


def test_free_ports_are_distinct():
    from trtserve_server.embedded import Ports

    for _ in range(50):
        ports = Ports.free()
        assert len({ports.http, ports.grpc, ports.metrics}) == 3


def test_another_triton_install_is_located_by_root(monkeypatch, tmp_path):
    """The NGC image's /opt/tritonserver layout (the container runs the same launcher)."""
    from trtserve_server.embedded import TritonInstall

    root = tmp_path / "tritonserver"
    with pytest.raises(ServerError, match="no Triton install at .*bin/tritonserver is missing"):
        TritonInstall.locate(root)
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "tritonserver").write_text("")
    (root / "backends" / "python").mkdir(parents=True)
    (root / "backends" / "python" / "triton_python_backend_stub").write_text("")
    monkeypatch.setenv("TRTSERVE_TRITON_ROOT", str(root))
    install = TritonInstall.locate()
    assert install.binary == root / "bin" / "tritonserver" and install.libs == root / "lib"
    install.prepare_python_backend()  # the image's own stub is kept: nothing to copy
    assert str(root / "lib") in install.environment()["LD_LIBRARY_PATH"].split(os.pathsep)


def test_supervised_command_line_restricts_the_repository_api(tmp_path):
    from trtserve_server.embedded import EmbeddedServer

    install = install_at(tmp_path)
    plain = EmbeddedServer(tmp_path).command(install)
    assert not [a for a in plain if "model-control" in a or "restricted" in a]
    # instance groups' priorities choose the instance (triton_config.preferred_instances)
    assert "--rate-limit=execution_count" in plain
    assert "--rate-limit=off" in EmbeddedServer(tmp_path, rate_limit="off").command(install)
    server = EmbeddedServer(tmp_path, admin_key="k" * 32)
    args = server.command(install)
    assert "--model-control-mode=explicit" in args and "--load-model=*" in args
    assert f"--http-restricted-api=model-repository:admin-key={'k' * 32}" in args
    assert f"--grpc-restricted-protocol=model-repository:admin-key={'k' * 32}" in args
    assert "k" * 32 not in repr(server)  # the key is not in the object's repr (logs, tracebacks)


def install_at(tmp_path: Path):
    from trtserve_server.embedded import TritonInstall

    return TritonInstall(binary=tmp_path / "tritonserver", libs=tmp_path / "libs", backends=tmp_path / "backends")
