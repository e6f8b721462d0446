"""Which instances of one served model are executing now, or were a moment ago, seen from each
of their processes.

Each Python-backend instance is a process of its own (a stub), so "has any other instance been
busy lately?" needs memory they share: a small file, mapped by every instance of the model in one
server, one 64-bit slot per instance: -1 while it executes, else the system's monotonic clock (ns)
when its last execution ended (0: none yet). One writer per slot and aligned 8-byte stores, so no
locks: a reader may see a value a moment late, which costs at most one run on the wrong threads.

The one model's preferred instance (``<name>_hot``) reads it to run ONNX Runtime on every core,
spinning, while it has the host to itself, and on its share of the cores beside a busy pool
(ort_encoder.OrtEncoder, ``solo_intra_op_threads``). "To itself" means no other instance executed
within :data:`QUIET_NS`: under load the pool's executions follow each other with gaps far
shorter than that, so a gap does not send the hot instance onto every core just before the pool's
next run (on 16 cores a flag without that window lost 10% of the 8-client throughput), while
one client at a time never wakes the pool at all.
"""
from __future__ import annotations

import contextlib
import os
import re
import time
from typing import Iterator

import numpy as np

from trtserve_contract.boards import PREFIX, board_directory, board_path, map_board, remove_stale_boards

__all__ = ["BUSY", "PREFIX", "QUIET_NS", "SLOTS", "BusyBoard", "board_directory", "remove_stale_boards", "slot_of"]

#: Slots in one board: slot 0 is the preferred instance's, the pool's instances take 1.. (an
#: instance index past the last slot shares one: the board only ever says "someone was busy").
SLOTS = 64
#: How long after another instance's execution ended the preferred one still counts it busy.
QUIET_NS = 20_000_000
BUSY = -1


def slot_of(instance: str, hot: bool) -> int:
    """An instance's slot: 0 for the preferred one, else 1 + the index Triton puts at the end of
    the instance's name (``sentiment_pool_2`` -> 3)."""
    if hot:
        return 0
    match = re.search(r"(\d+)$", instance)
    return 1 + (int(match.group(1)) if match else 0) % (SLOTS - 1)


class BusyBoard:
    """One instance's view of its model's board: :meth:`busy` around each execution,
    :meth:`others_busy` to ask about the rest."""

    def __init__(self, path: str, slot: int, quiet_ns: int = QUIET_NS):
        if not 0 <= slot < SLOTS:
            raise ValueError(f"slot {slot} outside 0..{SLOTS - 1}")
        self._map = map_board(path, SLOTS * 8)
        self._slots = np.frombuffer(self._map, dtype=np.int64)
        self.path = path
        self.slot = slot
        self.quiet_ns = quiet_ns

    @classmethod
    def for_instance(cls, model: str, instance: str, hot: bool, server_pid: int | None = None,
                     directory: str | None = None) -> "BusyBoard":
        """The board of ``model`` in the server that started this process (a stub's parent is
        the server: one board per server and model, whatever restarts the stubs)."""
        directory = directory or board_directory()
        remove_stale_boards(directory)
        pid = os.getppid() if server_pid is None else server_pid
        return cls(board_path(directory, pid, model), slot_of(instance, hot))

    @contextlib.contextmanager
    def busy(self) -> Iterator[None]:
        self._slots[self.slot] = BUSY
        try:
            yield
        finally:
            self._slots[self.slot] = time.monotonic_ns()

    def others_busy(self) -> bool:
        """Whether another instance executes now or ended an execution within ``quiet_ns``."""
        slots = self._slots.copy()
        slots[self.slot] = 0
        return bool((slots == BUSY).any() or (slots > time.monotonic_ns() - self.quiet_ns).any())

    def close(self) -> None:
        del self._slots  # the array's view of the map must go before the map
        self._map.close()
