"""A Locust process that has finished its run must exit, even when gRPC under gevent will not let it.

Locust's shutdown fires ``quitting``, stops the runner, prints the summary, fires ``quit`` and
calls ``sys.exit``. With gRPC patched for gevent (``grpc.experimental.gevent.init_gevent``) and
tritonclient's stream threads (one non-daemon handler thread per gRPC stream), the interpreter's
own exit can wait forever: seen once in CI, a headless ``generate_user.py`` run printed its
summary with 0 failures and never exited (killed at 180 s). Known gRPC + gevent shutdown
trouble (grpc/grpc#4629, #27340, locustio/locust#1676).

So each Locust file arms :func:`arm` on ``quitting``: a real OS thread (not a greenlet: the hub may
be the thing that is stuck) waits ``grace_s``; if the process is still alive by then it writes
every thread's stack to stderr (what a person needs to find the cause) and ends the process
with the exit code Locust had chosen (``quit`` records it), or 1 when Locust never got that far.
A process that exits normally never reaches the end of the wait: nothing changes for it.
"""
from __future__ import annotations

import faulthandler
import os
import sys
from typing import Callable

#: Seconds between ``quitting`` and the forced exit: Locust's own shutdown takes well under one.
GRACE_S = 30.0


class ExitWatchdog:
    def __init__(self, grace_s: float = GRACE_S, exit: Callable[[int], None] = os._exit) -> None:
        self.grace_s = grace_s
        self.exit = exit
        self.code: int | None = None
        self.armed = False

    def record(self, exit_code: int, **_kwargs) -> None:
        """Locust's ``quit`` listener: the code the process is about to exit with."""
        self.code = exit_code

    def arm(self, **_kwargs) -> None:
        """Locust's ``quitting`` listener: start the wait on a real OS thread (once)."""
        if self.armed:
            return
        self.armed = True
        start_new_thread, sleep = _real_thread_and_sleep()

        def wait_then_exit() -> None:
            sleep(self.grace_s)
            self.fire()

        start_new_thread(wait_then_exit, ())

    def fire(self) -> None:
        code = 1 if self.code is None else self.code
        print(f"locust: still running {self.grace_s:g}s after quitting; forcing exit {code} "
              "(stacks of every thread follow)", file=sys.stderr, flush=True)
        try:
            faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        except (ValueError, OSError, AttributeError):  # stderr closed or not a real file
            pass
        sys.stdout.flush()
        sys.stderr.flush()
        self.exit(code)


def _real_thread_and_sleep():
    """``_thread.start_new_thread`` and ``time.sleep`` as they were before gevent patched them."""
    try:
        from gevent import monkey

        return monkey.get_original("_thread", "start_new_thread"), monkey.get_original("time", "sleep")
    except ImportError:  # no gevent: nothing is patched
        import _thread
        import time

        return _thread.start_new_thread, time.sleep


def install(events, grace_s: float = GRACE_S) -> ExitWatchdog:
    """Wire a watchdog to a Locust ``events`` object (``quitting`` arms it, ``quit`` records the code)."""
    watchdog = ExitWatchdog(grace_s)
    events.quitting.add_listener(watchdog.arm)
    events.quit.add_listener(watchdog.record)
    return watchdog
