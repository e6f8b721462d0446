"""Keep every deployment answering: probe with real inferences, reload or restart on failure.

The loop (run in the launcher's main thread, which also starts every tritonserver, so that
the server's parent-death signal stays tied to a thread that lives as long as the launcher):

- every ``watch_interval_s``: has tritonserver exited? (-> restart at once); has a stub of
  one of its Python models vanished or stopped, or has a model's failure count grown in
  Triton's statistics? (-> probe that deployment at once);
- every ``probe_interval_s``: one real inference per deployment (:mod:`.probes`), with
  ``probe_timeout_s`` (shorter than the models' queue timeout, so a hung step shows up as
  *our* timeout, not as the server's "Request timeout expired");
- a probe that fails, or times out while a stub of the deployment is stuck or while the
  deployment answered and computed nothing else either, is repaired by the fastest action:
  kill what is stuck, unload + load the failing models (measured ~1.5 s; the other
  deployments keep serving), and when that does not bring the probe back, or the server is
  down or unreachable, restart tritonserver (measured ~5-8 s on 2 cores); a stub that vanished
  or stopped while another instance of its model answered the probe is reloaded all the same;
- restarts back off exponentially once ``loop_threshold`` of them fall within
  ``loop_window_s``; a deployment that fails again after each of ``loop_threshold - 1``
  reloads, with no good interval probe in between, is restarted instead;
- the shared-memory regions of killed stubs (and of a killed server) are unlinked: Triton
  leaves them behind in /dev/shm (RAM) otherwise.

Every event is logged with its cause; the counts are in :class:`~.status.SupervisorStats`.
"""
from __future__ import annotations

import logging
import time
import urllib.error

from .deployments import Deployment, model_of_instance
from .embedded import EmbeddedServer, ServerError
from .policy import Backoff, SupervisorSettings, describe_exit
from .probes import Outcome, Prober, ProbeResult
from .processes import Stub, cpu_seconds, kill_stub, reap, release_regions, state_of, stubs_of, while_alive
from .status import SupervisorStats

log = logging.getLogger("trtserve.supervisor")

__all__ = ["Supervisor", "SupervisorSettings", "Backoff"]


class Supervisor:
    """Run ``server`` and keep its deployments answering until :meth:`stop` (or a signal)."""

    def __init__(self, server: EmbeddedServer, settings: SupervisorSettings | None = None,
                 stats: SupervisorStats | None = None) -> None:
        if not server.admin_key:
            raise ValueError("the supervised server needs an admin_key (explicit model control)")
        self.server = server
        self.settings = settings or SupervisorSettings()
        self.stats = stats or SupervisorStats()
        self.deployments: list[Deployment] = []
        self._prober: Prober | None = None
        self._stopping = False
        s = self.settings
        self._restarts = Backoff(s.backoff_initial_s, s.backoff_max_s, s.loop_window_s, s.loop_threshold)
        self._timeouts: dict[str, int] = {}  # deployment -> probe timeouts in a row without progress
        #: (deployment, models reloaded) -> reloads of the same models with no good interval probe between
        self._repeats: dict[tuple[str, tuple[str, ...]], int] = {}
        self._regions: set[str] = set()  # shared-memory regions of the stubs seen
        self._tick = 0
        self._known_stubs: dict[str, int] = {}  # instance -> pid, as of the last look
        self._instances: set[str] = set()  # every instance seen since the server started
        self._failures: dict[str, int] = {}  # model -> failure count in Triton's statistics
        self._down_since: float | None = None

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self, ready_timeout_s: float | None = None) -> list[str]:
        """Start tritonserver and wait until every deployment answers; the deployments' names."""
        self.server.start()
        self.stats.set(server_starts=self.stats.server_starts + 1)
        self.server.wait_ready(timeout_s=ready_timeout_s or self.settings.ready_timeout_s, abort_if=self._stuck_stub)
        self.deployments = self.server.deployments()
        if self._prober:
            self._prober.close()
        self._prober = Prober(self.server.http_url, self.settings.probe_timeout_s)
        stubs = stubs_of(self.server.process.pid)
        self._known_stubs = {s.instance: s.pid for s in stubs}
        self._instances = set(self._known_stubs)
        self._regions = {s.shm_region for s in stubs if s.shm_region}
        self._repeats.clear()
        self._failures = self._failure_counts()
        self._down_since = None
        self.stats.set(server_up=True)
        return [d.name for d in self.deployments]

    def start_first(self, attempts: int = 3) -> list[str]:
        """The first start: a tritonserver killed by a signal while loading (seen: SIGABRT from
        the Python backend's shared-memory lock when loads took over 30 s on an overloaded
        machine) is started again, up to ``attempts`` times; an error exit (a broken repository)
        is not retried, so `make serve` fails fast and says why."""
        for attempt in range(1, attempts + 1):
            try:
                return self.start()
            except ServerError as e:
                code = self.server.process.returncode if self.server.process else None
                if code is None or code >= 0 or attempt == attempts or self._stopping:
                    raise
                log.warning("tritonserver %s while loading (start %d of %d); starting it again: %s",
                            describe_exit(code), attempt, attempts, e)
                self.server.kill()
                release_regions(self._regions)
        raise AssertionError("unreachable")

    def stop(self) -> None:
        self._stopping = True

    def _stuck_stub(self) -> str | None:
        """A stub that stopped (or died unreaped) while tritonserver loads: the load will hang."""
        stubs = stubs_of(self.server.process.pid)
        self._regions.update(st.shm_region for st in stubs if st.shm_region)
        stuck = [f"{st.instance} (pid {st.pid}, state {st.state})" for st in stubs if st.stuck]
        return f"stub {', '.join(stuck)} stuck while loading" if stuck else None

    def close(self) -> None:
        if self._prober:
            self._prober.close()
            self._prober = None
        self.stats.set(server_up=False)
        if self.server.process is not None:
            self._regions.update(st.shm_region for st in stubs_of(self.server.process.pid) if st.shm_region)
        self.server.stop()
        release_regions(self._regions)

    def run(self) -> int:
        """The supervision loop; returns when :meth:`stop` was called."""
        s = self.settings
        next_probe = 0.0
        while not self._stopping:
            now = time.monotonic()
            code = self.server.process.poll() if self.server.process else None
            if self.server.process is not None and code is not None:
                self._restart("exited", f"tritonserver {describe_exit(code)}")
                next_probe = 0.0
                continue
            due = self._triggered()
            if now >= next_probe:
                due = {d.name: "interval" for d in self.deployments} | due
                next_probe = now + s.probe_interval_s
            for name, why in due.items():
                deployment = next((d for d in self.deployments if d.name == name), None)
                if deployment is not None and not self._stopping:
                    timeout = s.triggered_timeout_s if why.startswith("stub ") else None
                    self._check(deployment, why, timeout)
                    if self.server.process is None or self.server.process.poll() is not None:
                        break
            time.sleep(s.watch_interval_s)
        return 0

    # -- detection ------------------------------------------------------------------------------

    def _triggered(self) -> dict[str, str]:
        """Deployments to probe now: a stub of theirs vanished or stopped, or a model of theirs
        counted new failures."""
        due: dict[str, str] = {}
        self._tick += 1
        if self._tick % 8 == 0:  # the whole table now and then (new instances); else the known pids
            current = {st.instance: st for st in stubs_of(self.server.process.pid)}
        else:
            current = {}
            for instance, pid in self._known_stubs.items():
                state = state_of(pid)
                if state is not None:
                    current[instance] = Stub(pid, instance, state)
        for instance, pid in self._known_stubs.items():
            stub = current.get(instance)
            if stub is None or stub.pid != pid:
                what = "vanished"
            elif stub.stuck:
                what = "stopped" if stub.state in "Tt" else "dead"
            else:
                what = None
            if what:
                for d in self.deployments:
                    if model_of_instance(instance, d.models):
                        due.setdefault(d.name, f"stub {instance} {what}")
        self._known_stubs = {i: st.pid for i, st in current.items() if not st.stuck}
        self._instances.update(current)
        self._regions.update(st.shm_region for st in current.values() if st.shm_region)
        failures = self._failure_counts() if self._tick % 2 == 0 else {}
        for model, count in failures.items():
            if count > self._failures.get(model, 0):
                for d in self.deployments:
                    if model in d.models:
                        due.setdefault(d.name, f"{model} counted {count - self._failures.get(model, 0)} failure(s)")
        self._failures = failures or self._failures
        return due

    def _failure_counts(self) -> dict[str, int]:
        try:
            stats = self.server._http("GET", "/v2/models/stats", timeout=1.0) or {}
        except (urllib.error.URLError, OSError, ValueError):
            return {}
        return {m["name"]: int(m.get("inference_stats", {}).get("fail", {}).get("count", 0))
                for m in stats.get("model_stats", [])}

    def _success_count(self, model: str) -> int | None:
        try:
            stats = self.server._http("GET", f"/v2/models/{model}/stats", timeout=1.0) or {}
            return sum(int(m.get("inference_stats", {}).get("success", {}).get("count", 0))
                       for m in stats.get("model_stats", []))
        except (urllib.error.URLError, OSError, ValueError):
            return None

    def _stub_cpu_seconds(self, deployment: Deployment) -> float:
        """CPU seconds used so far by the live stubs of ``deployment``'s models."""
        total = 0.0
        for instance, pid in self._known_stubs.items():
            if model_of_instance(instance, deployment.models):
                total += cpu_seconds(pid) or 0.0
        return total

    def _check(self, deployment: Deployment, why: str, timeout_s: float | None = None) -> None:
        before = self._success_count(deployment.name)
        cpu_before = self._stub_cpu_seconds(deployment)
        result = self._prober.probe(deployment, timeout_s=timeout_s)
        self.stats.add("probes", deployment.name)
        if result.outcome is not Outcome.TIMEOUT:
            self._timeouts[deployment.name] = 0
        if result.ok:
            self._down_since = None
            if why == "interval":
                for key in [k for k in self._repeats if k[0] == deployment.name]:
                    del self._repeats[key]
            elif why.startswith("stub "):
                self._reload_lost_instances(deployment, result)
            return
        if result.outcome is Outcome.BUSY:
            log.info("probe turned away (server busy, not a fault): %s", result.describe())
            return
        self.stats.add("probe_failures", deployment.name)
        detected = time.monotonic() - result.seconds
        log.warning("probe failed (%s): %s", why, result.describe())
        if result.outcome is Outcome.DOWN:
            self._down_since = self._down_since or detected
            if time.monotonic() - self._down_since >= self.settings.unreachable_s:
                self._restart("unreachable", f"no answer from tritonserver for "
                              f"{time.monotonic() - self._down_since:.1f}s ({result.error})")
            return
        current = stubs_of(self.server.process.pid)
        stuck = [st for st in current if st.stuck and model_of_instance(st.instance, deployment.models)]
        alive = {st.instance for st in current}
        vanished = [i for i in self._instances if i not in alive and model_of_instance(i, deployment.models)]
        if result.outcome is Outcome.TIMEOUT and not stuck and not vanished:
            # No stub of this deployment is stopped or gone: a slow answer may be load, not a
            # hang. Repair only after hang_confirmations timeouts in a row with no request of
            # this deployment answered meanwhile.
            after = self._success_count(deployment.name)
            if before is not None and after is not None and after > before:
                log.info("%s answered %d other request(s) while the probe waited: busy, not hung",
                         deployment.name, after - before)
                self._timeouts[deployment.name] = 0
                return
            used = self._stub_cpu_seconds(deployment) - cpu_before
            if used >= self.settings.busy_cpu_s:
                log.info("%s: its stubs computed for %.1f CPU s while the probe waited: busy, not hung",
                         deployment.name, used)
                self._timeouts[deployment.name] = 0
                return
            self._timeouts[deployment.name] = self._timeouts.get(deployment.name, 0) + 1
            if self._timeouts[deployment.name] < self.settings.hang_confirmations:
                log.info("%s: no answer and no progress (%d of %d before it counts as hung)", deployment.name,
                         self._timeouts[deployment.name], self.settings.hang_confirmations)
                return
        self._timeouts[deployment.name] = 0
        self._repair(deployment, result, stuck, detected)

    def _reload_lost_instances(self, deployment: Deployment, result: ProbeResult) -> None:
        """A stub vanished or stopped, yet the probe was answered: by another instance of the same
        model ("auto" gives several). The lost instance stays down, failing the requests it is
        given, until its model is reloaded; the probe cannot be relied on to land on it."""
        current = stubs_of(self.server.process.pid)
        alive = {st.instance for st in current if not st.stuck}
        lost = sorted(i for i in self._instances if i not in alive and model_of_instance(i, deployment.models))
        if lost:
            self.stats.add("instances_lost", deployment.name, len(lost))
            log.warning("%s answered, but instance(s) %s are gone or stopped", deployment.name, ", ".join(lost))
            stuck = [st for st in current if st.stuck and model_of_instance(st.instance, deployment.models)]
            self._repair(deployment, result, stuck, time.monotonic() - result.seconds)

    # -- repair ---------------------------------------------------------------------------------

    def _suspects(self, deployment: Deployment, result: ProbeResult, stuck) -> list[str]:
        """The models to reload: those whose stub the error names, vanished or is stuck; else
        every model behind the deployment."""
        named = set()
        message = str(result.error or "")
        current = {st.instance for st in stubs_of(self.server.process.pid)}
        for instance in self._instances:
            model = model_of_instance(instance, deployment.steps)
            if model and (f"'{instance}'" in message or instance not in current):
                named.add(model)
        named.update(m for st in stuck if (m := model_of_instance(st.instance, deployment.steps)))
        return [m for m in deployment.steps if m in named] or list(deployment.steps)

    def _repair(self, deployment: Deployment, result: ProbeResult, stuck, detected: float) -> None:
        suspects = self._suspects(deployment, result, stuck)
        key = (deployment.name, tuple(suspects))
        repeats = self._repeats.get(key, 0) + 1
        self._repeats[key] = repeats
        if repeats >= self.settings.loop_threshold:
            self._restart("reload-loop", f"{deployment.name} failed again after each of {repeats - 1} reloads of "
                          f"{', '.join(suspects)} (no good probe in between); last: {result.describe()}")
            return
        hung = result.outcome is Outcome.TIMEOUT
        old = [st for st in stubs_of(self.server.process.pid)
               if model_of_instance(st.instance, deployment.steps) in suspects]
        for st in old:
            if st.stuck or hung:
                log.warning("killing stub %s (pid %d, state %s): %s", st.instance, st.pid, st.state,
                            "stuck" if st.stuck else "deployment hung")
                kill_stub(st)
        log.warning("reloading %s for %s (cause: %s)", ", ".join(suspects), deployment.name, result.describe())
        try:
            started = time.monotonic()
            for model in suspects:
                while_alive(self.server.process, f"the unload of {model}", self.server.unload_model, model,
                            timeout=self.settings.reload_timeout_s)
            for st in reap(old, wait_s=0.5):
                log.warning("killed stub %s (pid %d): still running after its model was unloaded", st.instance, st.pid)
            unloaded = time.monotonic()
            for model in suspects:
                while_alive(self.server.process, f"the load of {model}", self.server.load_model, model,
                            timeout=self.settings.reload_timeout_s)
                self.stats.add("reloads", model)
            log.info("unload %.2fs, load %.2fs", unloaded - started, time.monotonic() - unloaded)
        except (urllib.error.URLError, OSError, ValueError) as e:
            self._restart_after_reload(f"reload of {', '.join(suspects)} failed: {e}")
            return
        stubs = stubs_of(self.server.process.pid)
        self._known_stubs = {st.instance: st.pid for st in stubs}
        self._instances.update(self._known_stubs)
        live = {st.shm_region for st in stubs if st.shm_region}
        release_regions(self._regions - live)  # the killed stubs' regions
        self._regions = live
        self._failures = self._failure_counts() or self._failures
        confirm = self._prober.probe(deployment, timeout_s=self.settings.confirm_timeout_s)
        if confirm.ok:
            took = time.monotonic() - detected
            self.stats.recovered(deployment.name, "reload", took)
            self.stats.set(last_event=f"reloaded {', '.join(suspects)}: {result.describe()}")
            log.warning("recovered %s by reloading %s, %.2fs after detection", deployment.name, ", ".join(suspects), took)
        else:
            self._restart_after_reload(f"reload of {', '.join(suspects)} did not restore "
                                       f"{deployment.name}: {confirm.describe()}")

    def _restart_after_reload(self, cause: str) -> None:
        """A reload did not repair: restart, counted as what happened. A tritonserver that exited
        meanwhile (a crash during the repair) is an "exited" restart with its signal or code,
        as the loop counts it, not a failed reload."""
        code = self.server.process.poll() if self.server.process is not None else None
        if code is not None:
            self._restart("exited", f"tritonserver {describe_exit(code)}")
        else:
            self._restart("reload-failed", cause)

    def _restart(self, kind: str, cause: str) -> None:
        """Stop tritonserver (its whole process group) and start it again, backing off when
        restarts loop; retried until the server is ready or the supervisor is stopped."""
        while not self._stopping:
            detected = time.monotonic()
            wait = self._restarts.delay(detected)
            self._restarts.record(detected)
            self.stats.add("restarts", kind)
            self.stats.set(server_up=False, last_event=f"restart ({kind}): {cause}")
            if wait:
                log.warning("restart loop (%d restarts within %.0fs): waiting %.1fs first",
                            self._restarts.recent(detected) - 1, self.settings.loop_window_s, wait)
                end = time.monotonic() + wait
                while time.monotonic() < end and not self._stopping:
                    time.sleep(0.1)
            log.warning("restarting tritonserver (cause: %s)", cause)
            if self.server.process is not None:
                self._regions.update(st.shm_region for st in stubs_of(self.server.process.pid) if st.shm_region)
            self.server.kill()  # its process group: the stubs go too
            release_regions(self._regions)  # a killed server leaves its stubs' regions behind
            try:
                names = self.start(self.settings.restart_ready_timeout_s)
            except (ServerError, urllib.error.URLError, OSError) as e:
                kind, cause = "start-failed", f"restart did not become ready: {e}"
                log.error("%s", cause)
                continue
            took = time.monotonic() - detected
            self.stats.recovered("all", "restart", took)
            log.warning("tritonserver restarted, %s answering, %.2fs after detection", ", ".join(names), took)
            return

