"""The supervisor's counters: Prometheus text on ``/metrics`` and JSON on ``/status``.

Served by a small HTTP server on loopback next to Triton's own metrics port, so the same
Prometheus job can scrape both; ``trtserve-server status`` prints the JSON.
"""
from __future__ import annotations

import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

__all__ = ["SupervisorStats", "StatusServer", "PREFIX"]

PREFIX = "trtserve_supervisor"


class SupervisorStats:
    """Thread-safe counters; the supervisor writes them, the status server reads them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.started = time.time()
        self.probes: Counter[str] = Counter()  # deployment -> probes sent
        self.probe_failures: Counter[str] = Counter()  # deployment -> probes that failed or timed out
        #: deployment -> stubs found gone or stopped while another instance answered the probe
        self.instances_lost: Counter[str] = Counter()
        self.reloads: Counter[str] = Counter()  # model -> unload+load done
        self.restarts: Counter[str] = Counter()  # cause kind -> server restarts
        self.recoveries: Counter[str] = Counter()  # action -> service restored
        self.last_recovery_s: dict[str, float] = {}  # deployment ("all" for a restart) -> detection to good probe
        self.server_up = False
        self.server_starts = 0
        self.last_event = ""

    def add(self, counter: str, key: str, n: int = 1) -> None:
        with self._lock:
            getattr(self, counter)[key] += n

    def set(self, **values) -> None:
        with self._lock:
            for name, value in values.items():
                setattr(self, name, value)

    def recovered(self, deployment: str, action: str, seconds: float) -> None:
        with self._lock:
            self.recoveries[action] += 1
            self.last_recovery_s[deployment] = seconds

    def snapshot(self) -> dict:
        with self._lock:
            return {
                "uptime_s": round(time.time() - self.started, 1),
                "server_up": self.server_up,
                "server_starts": self.server_starts,
                "restarts_total": sum(self.restarts.values()),
                "restarts": dict(self.restarts),
                "reloads": dict(self.reloads),
                "probes": dict(self.probes),
                "probe_failures": dict(self.probe_failures),
                "instances_lost": dict(self.instances_lost),
                "recoveries": dict(self.recoveries),
                "last_recovery_s": {k: round(v, 3) for k, v in self.last_recovery_s.items()},
                "last_event": self.last_event,
            }

    def prometheus(self) -> str:
        s = self.snapshot()
        lines: list[str] = []

        def metric(name: str, kind: str, help_text: str, samples: dict[str, float] | float, label: str = "") -> None:
            lines.append(f"# HELP {PREFIX}_{name} {help_text}")
            lines.append(f"# TYPE {PREFIX}_{name} {kind}")
            if isinstance(samples, dict):
                for key, value in sorted(samples.items()):
                    lines.append(f'{PREFIX}_{name}{{{label}="{key}"}} {value}')
            else:
                lines.append(f"{PREFIX}_{name} {samples}")

        metric("server_up", "gauge", "1 while tritonserver runs and answered at start, 0 during a restart",
               int(s["server_up"]))
        metric("server_starts_total", "counter", "tritonserver processes started", s["server_starts"])
        metric("restarts_total", "counter", "tritonserver restarts by cause", s["restarts"], "cause")
        metric("model_reloads_total", "counter", "unload+load of a failed model", s["reloads"], "model")
        metric("probes_total", "counter", "real inferences sent to each deployment", s["probes"], "deployment")
        metric("probe_failures_total", "counter", "probes that failed or timed out", s["probe_failures"], "deployment")
        metric("instances_lost_total", "counter", "stubs gone or stopped while another instance answered",
               s["instances_lost"], "deployment")
        metric("recoveries_total", "counter", "service restored, by action", s["recoveries"], "action")
        metric("last_recovery_seconds", "gauge", "detection to next good probe, last recovery",
               s["last_recovery_s"], "deployment")
        return "\n".join(lines) + "\n"


class StatusServer:
    """``GET /metrics`` (Prometheus text) and ``GET /status`` (JSON) on ``host:port``."""

    def __init__(self, stats: SupervisorStats, port: int, host: str = "127.0.0.1") -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                if self.path.startswith("/metrics"):
                    body, kind = stats.prometheus().encode(), "text/plain; version=0.0.4"
                elif self.path.startswith("/status"):
                    body, kind = json.dumps(stats.snapshot(), indent=2).encode(), "application/json"
                else:
                    self.send_error(404, "try /metrics or /status")
                    return
                self.send_response(200)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:  # scrapes are not events
                pass

        self._httpd = ThreadingHTTPServer((host, port), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="trtserve-status", daemon=True)

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    def start(self) -> "StatusServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
