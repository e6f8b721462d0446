"""Where the busy boards live and how they are named (:mod:`trtserve_backend.busy` writes them).

One file per served model and server process, ``<board_directory>/trtserve-busy-<server pid>-<model>``
(and one activity stamp per server, model name :data:`ACTIVITY`),
shared by the Python models that map it and the launcher that removes the boards of servers that
are gone (``trtserve_server.embedded``). Standard library only: the server image carries the
contract, not the backend (deploy/triton.cpu.Dockerfile).
"""
from __future__ import annotations

import contextlib
import mmap
import os
import re
import tempfile

PREFIX = "trtserve-busy-"
#: The board name of a server's activity stamp (trtserve_backend.idle_poll: when any of its
#: Python models last executed), beside the models' busy boards (deployment names are identifiers).
ACTIVITY = ".activity"


def board_directory() -> str:
    """Shared memory where the host has it (/dev/shm), else the temporary directory."""
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else tempfile.gettempdir()


def board_path(directory: str, server_pid: int, model: str) -> str:
    """The board of ``model`` in the server ``server_pid`` (the name made file-safe)."""
    return os.path.join(directory, f"{PREFIX}{server_pid}-{re.sub(r'[^A-Za-z0-9_.-]', '_', model)}")


def map_board(path: str, size: int) -> mmap.mmap:
    """The first ``size`` bytes of the board file at ``path``, mapped shared; the first process to
    ask makes the file (zeros; another's earlier extension to the same size is the same)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        if os.fstat(fd).st_size < size:
            os.ftruncate(fd, size)
        return mmap.mmap(fd, size)
    finally:
        os.close(fd)


def alive(pid: int) -> bool:
    """Whether process ``pid`` exists (someone else's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def remove_stale_boards(directory: str) -> None:
    """Boards of servers that are gone (the file name carries the server's process id)."""
    for name in os.listdir(directory):
        match = re.match(re.escape(PREFIX) + r"(\d+)-", name)
        if match and not alive(int(match.group(1))):
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(directory, name))
