"""The build's bottom layer: content stamps, files with ordinary permissions, the GPU's compute
capability, the error root."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from trtserve_build.core import host
from trtserve_build.core.errors import (
    BuildError,
    CalibrationError,
    ConfigError,
    EngineBuildError,
    ExportError,
    NonFiniteOutputError,
    PrecisionError,
    SpecError,
    ToleranceError,
    TorchScriptError,
)
from trtserve_build.core.files import building, replace_dir, temp_dir_beside, write_text_atomic
from trtserve_build.core.lazy import lazy_import
from trtserve_build.core.stamps import content_digest, digest, stamp_matches, write_stamp
from trtserve_build.stages.export import export_fingerprint


# ---- one error root ---------------------------------------------------------------------------

def test_every_build_error_has_one_root():
    for cls in (SpecError, ToleranceError, NonFiniteOutputError, PrecisionError, CalibrationError,
                EngineBuildError, ExportError, TorchScriptError, ConfigError):
        assert issubclass(cls, BuildError)
    assert issubclass(NonFiniteOutputError, ToleranceError)  # one ToleranceError, one meaning


# ---- stamps by content -----------------------------------------------------------------------

def _package(root: Path) -> Path:
    (root / "sub").mkdir(parents=True)
    (root / "config.json").write_text('{"hidden_size": 8}')
    (root / "sub" / "weights.bin").write_bytes(b"\x00\x01" * 100)
    return root


def test_content_digest_ignores_mtime_owner_and_mode(tmp_path):
    """A host venv and a container install of the same files must give the same stamp."""
    host_copy = _package(tmp_path / "host")
    container_copy = tmp_path / "container"
    shutil.copytree(host_copy, container_copy)  # new inodes, new mtimes
    os.utime(container_copy / "config.json", (1, 1))
    (container_copy / "sub" / "weights.bin").chmod(0o600)
    assert content_digest(host_copy) == content_digest(container_copy)
    (container_copy / "sub" / "weights.bin").write_bytes(b"\x00\x02" * 100)  # same size, other bytes
    assert content_digest(host_copy) != content_digest(container_copy)
    (host_copy / "sub" / "weights.bin").rename(host_copy / "sub" / "renamed.bin")
    assert content_digest(host_copy) != content_digest(_package(tmp_path / "again"))


def test_export_fingerprint_is_by_content(tmp_path, embed_spec):
    a, b = _package(tmp_path / "a"), tmp_path / "b"
    shutil.copytree(a, b)
    os.utime(b / "config.json", (10**9, 10**9))
    assert export_fingerprint(embed_spec, a) == export_fingerprint(embed_spec, b)
    (b / "config.json").write_text('{"hidden_size": 9}')
    assert export_fingerprint(embed_spec, a) != export_fingerprint(embed_spec, b)


def test_stamp_matches_only_its_key(tmp_path):
    stamp = tmp_path / "artifact.json"
    assert not stamp_matches(stamp, {"a": 1})  # missing
    write_stamp(stamp, {"key": {"a": 1}})
    assert stamp_matches(stamp, {"a": 1}) and not stamp_matches(stamp, {"a": 2})
    stamp.write_text("{not json")
    assert not stamp_matches(stamp, {"a": 1})
    assert digest({"b": 1, "a": 2}) == digest({"a": 2, "b": 1}) != digest({"a": 2})


# ---- no root-owned 0700 leftovers --------------------------------------------------------------

def test_temp_dirs_and_files_get_ordinary_permissions(tmp_path):
    target = tmp_path / "engines" / "embed"
    tmp = temp_dir_beside(target)
    assert tmp.parent == target.parent and tmp.name.startswith(".embed")
    assert oct(tmp.stat().st_mode & 0o777) == oct(0o755)  # mkdtemp alone makes 0700
    (tmp / "model.onnx").write_bytes(b"x")
    replace_dir(tmp, target)
    assert (target / "model.onnx").read_bytes() == b"x" and not tmp.exists()
    write_text_atomic(target / "export.json", "{}")
    assert oct((target / "export.json").stat().st_mode & 0o777) == oct(0o644)  # mkstemp alone makes 0600
    assert [p.name for p in target.parent.iterdir()] == ["embed"]  # nothing left beside it


def test_building_swaps_in_on_success_and_leaves_the_target_alone_on_error(tmp_path):
    target = tmp_path / "tokenizers" / "gpt2"
    with building(target) as tmp:
        (tmp / "vocab.json").write_text("{}")
        os.chmod(tmp / "vocab.json", 0o600)
        assert not target.exists()
    assert (target / "vocab.json").read_text() == "{}"
    assert oct((target / "vocab.json").stat().st_mode & 0o777) == oct(0o644)
    with pytest.raises(RuntimeError, match="half written"):
        with building(target) as tmp:
            (tmp / "vocab.json").write_text("half")
            raise RuntimeError("half written")
    assert (target / "vocab.json").read_text() == "{}"  # the old folder, untouched
    assert [p.name for p in target.parent.iterdir()] == ["gpt2"]  # no temp folder left beside it


# ---- the GPU's compute capability without torch ---------------------------------------------------

def test_parse_compute_caps():
    assert host.parse_compute_caps("9.0\n9.0\n") == ["9.0", "9.0"]
    assert host.parse_compute_caps("12.0\n") == ["12.0"]
    assert host.parse_compute_caps("[N/A]\n") == []
    assert host.parse_compute_caps("") == []


def _fake_nvidia_smi(folder: Path, output: str, status: int = 0) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    exe = folder / "nvidia-smi"
    exe.write_text(f"#!/bin/sh\n[ \"$1\" = \"--query-gpu=compute_cap\" ] || exit 9\nprintf '{output}'\nexit {status}\n")
    exe.chmod(0o755)


def test_compute_capability_comes_from_nvidia_smi(tmp_path, monkeypatch):
    """A real executable on PATH answers as nvidia-smi does on the H200 (no torch involved)."""
    _fake_nvidia_smi(tmp_path / "bin", "9.0\\n")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    assert host.gpu_compute_capability() == ("9.0", "nvidia-smi")


def test_compute_capability_unknown_without_a_gpu(tmp_path, monkeypatch):
    _fake_nvidia_smi(tmp_path / "bin", "No devices were found\\n", status=6)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    cap, source = host.gpu_compute_capability()
    if source == "torch.cuda":  # a GPU host whose nvidia-smi is broken: torch answers
        assert cap != host.UNKNOWN
    else:
        assert (cap, source) == (host.UNKNOWN, host.UNKNOWN)


def test_lazy_import_defers_the_import():
    code = ("import sys\nfrom trtserve_build.core.lazy import lazy_import\n"
            "m = lazy_import('wave')\nassert 'wave' not in sys.modules\n"
            "assert m.WAVE_FORMAT_PCM == 1 and 'wave' in sys.modules\n")
    subprocess.run([os.sys.executable, "-c", code], check=True, timeout=60)
    with pytest.raises(ImportError):
        lazy_import("no_such_module_here").anything
