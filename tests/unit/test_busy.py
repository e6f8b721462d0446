"""The board on which the instances of one served model note their executions (trtserve_backend.busy)."""
from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from trtserve_backend.busy import BUSY, PREFIX, QUIET_NS, SLOTS, BusyBoard, remove_stale_boards, slot_of


def test_slots_follow_triton_instance_names():
    assert slot_of("sentiment_hot_0", hot=True) == 0
    assert slot_of("sentiment_pool_0", hot=False) == 1
    assert slot_of("sentiment_pool_2", hot=False) == 3
    assert slot_of("sentiment_pool", hot=False) == 1  # an older core's lone instance
    assert 1 <= slot_of(f"sentiment_pool_{SLOTS * 3}", hot=False) < SLOTS  # wraps, never slot 0


def _execute_in_another_process(path, slot, started, release):
    board = BusyBoard(path, slot)
    with board.busy():
        started.set()
        release.wait(30)


def test_an_execution_in_another_process_shows_until_a_quiet_moment_after_it_ends(tmp_path):
    hot = BusyBoard.for_instance("sentiment", "sentiment_hot_0", hot=True, server_pid=os.getpid(),
                                 directory=str(tmp_path))
    assert hot.quiet_ns == QUIET_NS
    assert not hot.others_busy()
    with hot.busy():  # its own executions do not count
        assert not hot.others_busy()
    ctx = multiprocessing.get_context("spawn")
    started, release = ctx.Event(), ctx.Event()
    worker = ctx.Process(target=_execute_in_another_process, args=(hot.path, slot_of("sentiment_pool_1", False),
                                                                   started, release))
    worker.start()
    try:
        assert started.wait(60)
        assert hot.others_busy()
    finally:
        release.set()
        worker.join(60)
    ended = time.monotonic_ns()
    assert worker.exitcode == 0
    slots = np.fromfile(hot.path, dtype=np.int64)
    assert 0 < slots[2] <= ended and BUSY not in slots  # when the pool's execution ended
    # busy until QUIET_NS after that, then not
    hot.quiet_ns = 10**15
    assert hot.others_busy()
    hot.quiet_ns = 0
    assert not hot.others_busy()
    hot.close()


def test_a_failing_execution_clears_its_flag(tmp_path):
    path = str(tmp_path / "board")
    pool, hot = BusyBoard(path, 2), BusyBoard(path, 0, quiet_ns=0)
    with pytest.raises(RuntimeError):
        with pool.busy():
            assert hot.others_busy()
            raise RuntimeError("inference failed")
    assert not hot.others_busy()
    with pytest.raises(ValueError, match="slot 64"):
        BusyBoard(path, SLOTS)


def test_boards_of_servers_that_are_gone_are_removed(tmp_path):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    stale = tmp_path / f"{PREFIX}{gone.pid}-sentiment"
    live = tmp_path / f"{PREFIX}{os.getpid()}-sentiment"
    other = tmp_path / "unrelated"
    for p in (stale, live, other):
        p.write_bytes(bytes(SLOTS * 8))
    remove_stale_boards(str(tmp_path))
    assert not stale.exists() and live.exists() and other.exists()
    board = BusyBoard.for_instance("my model/1", "x_pool_0", hot=False, server_pid=os.getpid(),
                                   directory=str(tmp_path))
    assert os.path.basename(board.path) == f"{PREFIX}{os.getpid()}-my_model_1"


def test_map_board_makes_the_file_once_and_every_mapping_shares_it(tmp_path):
    """The one way both boards map their file (trtserve_contract.boards.map_board): made and zeroed
    by the first, never cut shorter by a later, smaller request, and one memory for all."""
    from trtserve_contract.boards import map_board

    path = str(tmp_path / "board")
    first = map_board(path, 64)
    assert os.path.getsize(path) == 64 and first[:] == bytes(64)
    first[8:16] = (7).to_bytes(8, "little")
    second = map_board(path, 16)  # a smaller view of the same file
    assert os.path.getsize(path) == 64 and int.from_bytes(second[8:16], "little") == 7
    second[0:8] = (5).to_bytes(8, "little")
    assert int.from_bytes(first[0:8], "little") == 5
    third = map_board(path, 128)  # a larger one extends the file with zeros, keeping what is there
    assert os.path.getsize(path) == 128 and int.from_bytes(third[8:16], "little") == 7 and third[64:] == bytes(64)
    for m in (first, second, third):
        m.close()
