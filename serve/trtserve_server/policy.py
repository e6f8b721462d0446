"""The supervisor's settings and its restart backoff (:mod:`.supervisor` runs the loop)."""
from __future__ import annotations

import signal
from collections import deque
from dataclasses import dataclass

__all__ = ["SupervisorSettings", "Backoff", "describe_exit"]


@dataclass(frozen=True)
class SupervisorSettings:
    probe_interval_s: float = 1.0
    probe_timeout_s: float = 1.5
    #: the probe after a repair waits longer: the reloaded model's first request is slower
    confirm_timeout_s: float = 10.0
    watch_interval_s: float = 0.25
    #: the probe sent because a stub vanished or stopped: the evidence is there already
    triggered_timeout_s: float = 0.5
    ready_timeout_s: float = 180.0
    #: a restarted server that is not answering after this long is killed and started again
    restart_ready_timeout_s: float = 60.0
    #: probe timeouts in a row, with no request of the deployment answered meanwhile and no
    #: stub of it stopped or gone, before it counts as hung (one is enough with such a stub)
    hang_confirmations: int = 3
    #: CPU seconds the deployment's stubs must use while a probe waits for the timeout to count
    #: as work, not a hang: one long request (a question-answering context of ~90 windows) keeps
    #: the encoder computing for several seconds on a CPU host, with no request answered
    busy_cpu_s: float = 0.2
    #: how long one repository-API load or unload may take
    reload_timeout_s: float = 30.0
    #: a server that answers no probe (DOWN) for this long is restarted
    unreachable_s: float = 3.0
    backoff_initial_s: float = 1.0
    backoff_max_s: float = 60.0
    loop_window_s: float = 60.0
    loop_threshold: int = 3


class Backoff:
    """Exponential delay once ``threshold`` events fall within ``window_s``."""

    def __init__(self, initial_s: float, max_s: float, window_s: float, threshold: int) -> None:
        self.initial_s, self.max_s, self.window_s, self.threshold = initial_s, max_s, window_s, threshold
        self.events: deque[float] = deque()

    def record(self, now: float) -> None:
        self.events.append(now)

    def recent(self, now: float) -> int:
        while self.events and now - self.events[0] > self.window_s:
            self.events.popleft()
        return len(self.events)

    def delay(self, now: float) -> float:
        excess = self.recent(now) - self.threshold + 1
        return 0.0 if excess <= 0 else min(self.max_s, self.initial_s * 2 ** (excess - 1))


def describe_exit(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"
