"""File utilities every stage shares: hashing, atomic writes, folders swapped into place.

Temporary files and folders are made *beside* their target (same filesystem, so the final
rename is atomic) and with ordinary permissions (0644 files, 0755 folders): a build run as
root in a container must not leave 0700/0600 entries that a non-root user on the host can
neither read nor replace.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from pathlib import Path

FILE_MODE = 0o644
DIR_MODE = 0o755


def sha256_file(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def temp_dir_beside(target: Path, prefix: str | None = None) -> Path:
    """A new, empty folder next to ``target`` with mode 0755 (``mkdtemp`` makes 0700)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=prefix or f".{target.name}.tmp-", dir=target.parent))
    tmp.chmod(DIR_MODE)
    return tmp


def make_readable(folder: Path) -> None:
    """Give every file below ``folder`` mode 0644 and every folder 0755 (writers such as
    safetensors create 0600 files)."""
    folder = Path(folder)
    folder.chmod(DIR_MODE)
    for path in folder.rglob("*"):
        if path.is_symlink():
            continue
        path.chmod(DIR_MODE if path.is_dir() else FILE_MODE)


def replace_dir(new: Path, target: Path) -> None:
    """Swap ``new`` into place at ``target`` (old contents removed)."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        target.rename(old)
    new.rename(target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def building(target: Path, prefix: str | None = None):
    """Yield a new, empty folder beside ``target`` to write into; when the block ends normally,
    make its contents readable and swap it in at ``target`` (old contents removed); when it
    raises, remove it and leave ``target`` as it was."""
    target = Path(target)
    tmp = temp_dir_beside(target, prefix)
    try:
        yield tmp
        make_readable(tmp)
        replace_dir(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_bytes_atomic(path: Path, data: bytes | memoryview) -> None:
    """Write to a temp file in the same folder, fsync, chmod 0644, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, FILE_MODE)  # mkstemp makes 0600; the serving container may run as another user
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))
