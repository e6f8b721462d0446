"""The one cache-stamp mechanism: an artifact is current when the key it was made from, stored
beside it, equals the key wanted now.

Keys are JSON-able dicts (or their :func:`digest`); folders and files enter a key by their
*content* (:func:`content_digest`, :func:`~trtserve_build.core.files.sha256_file`), never by
modification time, so the same package installed in a host venv and in a container gives the
same stamp.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from .files import sha256_file, write_text_atomic


def digest(payload: Any) -> str:
    """A short, stable hash of a JSON-able value (keys sorted)."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def content_digest(folder: Path, pattern: str = "*") -> str:
    """Identity of a folder's files matching ``pattern``: relative paths and their bytes.

    Modification times, owners and modes do not enter, so two installs of the same files
    (a venv on the host, the same package in a container) digest alike.
    """
    folder = Path(folder)
    h = hashlib.sha256()
    for p in sorted(folder.rglob(pattern)):
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc":
            h.update(f"{p.relative_to(folder).as_posix()}:{sha256_file(p)}\n".encode())
    return h.hexdigest()[:16]


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object stored at ``path``, or None when it is missing or unreadable."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def stamp_matches(path: Path, key: Any, field: str = "key") -> bool:
    """True when the JSON stamp at ``path`` stores ``key`` under ``field``."""
    data = read_json(path)
    return data is not None and data.get(field) == key


def write_stamp(path: Path, data: dict[str, Any], *, sort_keys: bool = False) -> None:
    """Write a stamp (atomically, mode 0644) after the artifact it describes is in place."""
    write_text_atomic(Path(path), json.dumps(data, indent=2, sort_keys=sort_keys) + "\n")
