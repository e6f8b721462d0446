"""The supervisor's pure parts: deployment discovery, stub table, counters, backoff, outcomes."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from trtserve_client.errors import (
    BadInputError,
    InferenceError,
    ModelNotReadyError,
    RequestTimeoutError,
    ServerOverloadedError,
    ServerUnavailableError,
    error_class_for_status,
)
from trtserve_client.retry import RetryPolicy, is_retryable
from trtserve_server.deployments import Deployment, discover, model_of_instance
from trtserve_server.probes import Outcome, outcome_of
from trtserve_server.processes import Stub, _instance_from_cmdline, kill_stub, reap, stubs_of
from trtserve_server.status import StatusServer, SupervisorStats
from trtserve_server.supervisor import Backoff


def _tensor(name, dtype="TYPE_FP32"):
    return {"name": name, "data_type": dtype, "dims": [1]}


def _configs():
    text = _tensor("TEXT", "TYPE_STRING")
    ids = _tensor("input_ids", "TYPE_INT64")
    step = lambda m: {"model_name": m, "model_version": -1}  # noqa: E731
    return {
        "sentiment": {"input": [text], "output": [_tensor("LABEL", "TYPE_STRING"), _tensor("SCORE"), _tensor("PROBABILITIES")],
                      "platform": "ensemble",
                      "ensemble_scheduling": {"step": [step("sentiment_tokenizer"), step("sentiment_encoder"),
                                                       step("sentiment_postprocess")]}},
        "sentiment_tokenizer": {"input": [text], "output": [ids], "backend": "python"},
        "sentiment_encoder": {"input": [ids], "output": [_tensor("logits")]},
        "sentiment_postprocess": {"input": [_tensor("logits")], "parameters": {"labels": {"string_value": '["neg", "pos"]'}},
                                  "output": [_tensor("LABEL", "TYPE_STRING"), _tensor("SCORE"), _tensor("PROBABILITIES")]},
        # one Python model with the embedding contract, not an ensemble
        "embed": {"input": [text], "output": [_tensor("EMBEDDING")], "backend": "python"},
    }


def test_deployments_are_found_by_contract_not_by_platform():
    found = {d.name: d for d in discover(_configs())}
    assert set(found) == {"sentiment", "embed"}  # the tokenizer takes TEXT but has no task outputs
    assert found["sentiment"].task == "classification"
    assert found["sentiment"].steps == ("sentiment_tokenizer", "sentiment_encoder", "sentiment_postprocess")
    assert found["sentiment"].labels == ("neg", "pos")
    assert found["embed"] == Deployment("embed", "embedding", ("embed",))
    assert found["embed"].steps == ("embed",)


def test_question_answering_and_ner_deployments_are_found_by_their_contracts():
    configs = _configs()
    strings = lambda *names: [_tensor(n, "TYPE_STRING") for n in names]  # noqa: E731
    configs["qa"] = {"input": strings("QUESTION", "CONTEXT"), "platform": "ensemble",
                     "output": [*strings("ANSWER"), _tensor("SCORE"), _tensor("START", "TYPE_INT32"), _tensor("END", "TYPE_INT32")],
                     "ensemble_scheduling": {"step": [{"model_name": "qa_tokenizer"}, {"model_name": "qa_postprocess"}]}}
    configs["qa_tokenizer"] = {"input": strings("QUESTION", "CONTEXT"), "output": [_tensor("input_ids", "TYPE_INT64")]}
    configs["qa_postprocess"] = {"input": [_tensor("logits")], "output": configs["qa"]["output"]}
    configs["ner"] = {"input": strings("TEXT"), "output": strings("ENTITIES"), "backend": "python"}
    configs["half_qa"] = {"input": strings("QUESTION"), "output": configs["qa"]["output"]}  # no CONTEXT: no contract
    found = {d.name: d for d in discover(configs)}
    assert set(found) == {"sentiment", "embed", "qa", "ner"}
    assert found["qa"].task == "question_answering" and found["qa"].steps == ("qa_tokenizer", "qa_postprocess")
    assert found["ner"] == Deployment("ner", "token_classification", ("ner",))


def test_the_decoupled_generate_model_is_a_generation_deployment():
    """PROMPT -> TEXT, FINISH_REASON, TOKENS is the generation task (probed with a one-token
    generate, not as an encoder); TEXT -> TEXT alone, or PROMPT without the outputs, is nothing."""
    configs = _configs()
    prompt = _tensor("PROMPT", "TYPE_STRING")
    outputs = [_tensor("TEXT", "TYPE_STRING"), _tensor("FINISH_REASON", "TYPE_STRING"), _tensor("TOKENS", "TYPE_INT32")]
    configs["generate"] = {"input": [prompt, _tensor("MAX_NEW_TOKENS", "TYPE_INT32")], "output": outputs,
                           "backend": "python", "model_transaction_policy": {"decoupled": True}}
    configs["echo"] = {"input": [_tensor("TEXT", "TYPE_STRING")], "output": outputs[:1], "backend": "python"}
    configs["half"] = {"input": [prompt], "output": outputs[:2], "backend": "python"}
    configs["ints"] = {"input": [_tensor("PROMPT", "TYPE_INT32")], "output": outputs, "backend": "python"}
    found = {d.name: d for d in discover(configs)}
    assert set(found) == {"sentiment", "embed", "generate"}
    assert found["generate"] == Deployment("generate", "generation", ("generate",))


def test_nested_ensembles_are_followed_once():
    configs = _configs()
    configs["outer"] = dict(configs["sentiment"], ensemble_scheduling={"step": [{"model_name": "sentiment"}]})
    outer = next(d for d in discover(configs) if d.name == "outer")
    assert outer.models == ("outer", "sentiment", "sentiment_tokenizer", "sentiment_encoder", "sentiment_postprocess")


def test_instance_names_map_to_models():
    models = ("sentiment", "sentiment_tokenizer", "sentiment_encoder")
    assert model_of_instance("sentiment_tokenizer_0_0", models) == "sentiment_tokenizer"
    assert model_of_instance("sentiment_encoder_1_3", models) == "sentiment_encoder"
    assert model_of_instance("sentiment_0_0", models) == "sentiment"
    assert model_of_instance("embed_tokenizer_0_0", models) is None


def test_stub_command_line_names_its_instance():
    argv = ["/x/backends/python/triton_python_backend_stub", "/repo/sentiment_tokenizer/1/model.py",
            "triton_python_backend_shm_region_7", "1048576", "1048576", "4242", "/x/backends/python",
            "336", "sentiment_tokenizer_0_0", "DEFAULT"]
    assert _instance_from_cmdline(argv) == "sentiment_tokenizer_0_0"
    assert _instance_from_cmdline(["/usr/bin/python3", "x_0_0"]) is None


def test_stub_table_reads_a_real_process_group():
    """A stand-in stub (a child named like the stub, with its argv shape) in the process group
    of a stand-in server; SIGSTOP shows as stuck, SIGKILL as gone."""
    argv = ("/x/triton_python_backend_stub -c 'import time; time.sleep(60)' /repo/demo/1/model.py "
            "triton_python_backend_shm_region_7 1048576 1048576 1 /x 336 demo_model_0_0 DEFAULT")
    server = subprocess.Popen(["bash", "-c", f"exec -a {argv.split()[0]} {sys.executable} {argv.split(' ', 1)[1]} & wait"],
                              start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        found = []
        while time.monotonic() < deadline and not found:
            found = stubs_of(server.pid)
            time.sleep(0.05)
        assert [s.instance for s in found] == ["demo_model_0_0"] and not found[0].stuck
        assert found[0].shm_region == "triton_python_backend_shm_region_7"
        os.kill(found[0].pid, signal.SIGSTOP)
        time.sleep(0.2)
        [stopped] = stubs_of(server.pid)
        assert stopped.stuck and stopped.state == "T"
        kill_stub(stopped)
        deadline = time.monotonic() + 5
        while stubs_of(server.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert stubs_of(server.pid) == []
    finally:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()


def test_reap_waits_for_exiting_stubs_and_kills_the_ones_left():
    """After an unload: a stub that exits is waited for, one that lingers is killed."""
    exits = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.2)"])
    lingers = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        stubs = [Stub(exits.pid, "m_0_0", "S"), Stub(lingers.pid, "m_0_1", "S")]
        started = time.monotonic()
        killed = reap(stubs, wait_s=1.0)
        assert [st.instance for st in killed] == ["m_0_1"]
        assert 0.2 <= time.monotonic() - started < 5
        assert lingers.wait(timeout=5) == -signal.SIGKILL and exits.wait(timeout=5) == 0
        assert reap([Stub(exits.pid, "m_0_0", "S")], wait_s=1.0) == []  # gone: nothing to wait for
    finally:
        for p in (exits, lingers):
            p.kill()
            p.wait()


def test_probe_outcomes_tell_busy_from_broken():
    assert outcome_of(ServerOverloadedError("Exceeds maximum queue size", status="StatusCode.UNAVAILABLE")) is Outcome.BUSY
    assert outcome_of(RequestTimeoutError("Request timeout expired", status="StatusCode.UNAVAILABLE")) is Outcome.BUSY
    assert outcome_of(RequestTimeoutError("Deadline Exceeded", status="StatusCode.DEADLINE_EXCEEDED")) is Outcome.TIMEOUT
    assert outcome_of(ServerUnavailableError("failed to connect", status="StatusCode.UNAVAILABLE")) is Outcome.DOWN
    assert outcome_of(ModelNotReadyError("not ready")) is Outcome.FAILED
    assert outcome_of(InferenceError("boom")) is Outcome.FAILED


@pytest.mark.parametrize("status", ["StatusCode.INTERNAL", "500"])
def test_a_dead_stub_is_a_model_that_is_down_and_retryable(status):
    message = ("in ensemble 'sentiment', Failed to process the request(s) for model instance "
               "'sentiment_tokenizer_0_0', message: Stub process 'sentiment_tokenizer_0_0' is not healthy.")
    cls = error_class_for_status(status, message)
    assert cls is ModelNotReadyError
    assert is_retryable(cls(message, status=status))
    # other backend failures stay non-retryable, bad text stays bad input
    assert error_class_for_status(status, "ValueError: something broke") is InferenceError
    assert error_class_for_status(status, "TEXT[0] is not valid UTF-8") is BadInputError


def test_recovery_retry_policy_outlasts_a_restart():
    policy = RetryPolicy.through_recovery()
    assert policy.deadline_s >= 30 and policy.max_backoff_s <= 1.0
    # the attempts are not what ends it: 200 attempts of at most 1 s outlast the deadline
    assert policy.max_attempts * policy.max_backoff_s > policy.deadline_s


def test_backoff_starts_only_when_restarts_loop():
    b = Backoff(initial_s=1, max_s=8, window_s=60, threshold=3)
    assert b.delay(0) == 0
    for t in (0, 1):
        b.record(t)
    assert b.delay(2) == 0  # a third restart within the window is still immediate
    b.record(2)
    assert b.delay(3) == 1
    b.record(3)
    assert b.delay(4) == 2
    for t in range(4, 20):
        b.record(t)
    assert b.delay(20) == 8  # capped
    assert b.delay(200) == 0  # a quiet window resets it


def test_status_server_serves_prometheus_text_and_json():
    stats = SupervisorStats()
    stats.add("probes", "sentiment", 3)
    stats.add("probe_failures", "sentiment")
    stats.add("reloads", "sentiment_tokenizer")
    stats.add("restarts", "exited")
    stats.recovered("sentiment", "reload", 1.25)
    server = StatusServer(stats, port=0).start()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=5) as r:
            text = r.read().decode()
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/status", timeout=5) as r:
            status = json.loads(r.read())
    finally:
        server.stop()
    assert 'trtserve_supervisor_probe_failures_total{deployment="sentiment"} 1' in text
    assert 'trtserve_supervisor_model_reloads_total{model="sentiment_tokenizer"} 1' in text
    assert 'trtserve_supervisor_restarts_total{cause="exited"} 1' in text
    assert "# TYPE trtserve_supervisor_probes_total counter" in text
    assert status["restarts_total"] == 1 and status["last_recovery_s"] == {"sentiment": 1.25}


def test_status_command_reads_a_running_supervisor(capsys):
    from trtserve_server.cli import main

    stats = SupervisorStats()
    stats.add("restarts", "exited", 2)
    server = StatusServer(stats, port=0).start()
    try:
        assert main(["status", "--status-port", str(server.port)]) == 0
    finally:
        server.stop()
    assert json.loads(capsys.readouterr().out)["restarts_total"] == 2
    assert main(["status", "--status-port", "1"]) == 3  # nothing there: a clear exit code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__]))


def test_only_named_stub_regions_are_released(tmp_path):
    from trtserve_server.processes import release_regions

    mine = "triton_python_backend_shm_region_1234"
    for name in (mine, "triton_python_backend_shm_region_other", "unrelated"):
        (tmp_path / name).write_bytes(b"x")
    assert release_regions({mine, "unrelated", "triton_python_backend_shm_region_gone", "../etc"}, tmp_path) == [mine]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["triton_python_backend_shm_region_other", "unrelated"]


class _FakeProcess:
    def __init__(self) -> None:
        self.pid = os.getpid()  # a process group with no stubs in it

    def poll(self):
        return None


class _FakeServer:
    """Stands in for EmbeddedServer: start() fails ``failures`` times (a restart loop)."""

    admin_key = "k"
    http_url = "127.0.0.1:9"

    def __init__(self, failures: int) -> None:
        self.failures, self.starts, self.kills = failures, 0, 0
        self.process = None

    def start(self):
        self.starts += 1
        self.process = _FakeProcess()

    def wait_ready(self, timeout_s, abort_if=None):
        from trtserve_server.embedded import ServerError

        assert abort_if() is None
        if self.starts <= self.failures:
            raise ServerError(f"start {self.starts} failed")
        return []

    def deployments(self):
        return []

    def kill(self):
        self.kills += 1

    def stop(self):
        pass

    def _http(self, *args, **kwargs):
        raise OSError("no server")


def test_a_restart_loop_backs_off_and_counts_every_attempt(monkeypatch):
    from trtserve_server import supervisor as sv

    waits = []
    monkeypatch.setattr(sv.Backoff, "delay", lambda self, now, _orig=sv.Backoff.delay: waits.append(_orig(self, now)) or 0.0)
    server = _FakeServer(failures=4)
    sup = sv.Supervisor(server, sv.SupervisorSettings(backoff_initial_s=1, backoff_max_s=4, loop_threshold=2))
    sup._restart("exited", "tritonserver killed by SIGSEGV")
    assert server.starts == 5 and server.kills == 5
    assert waits == [0, 0, 1, 2, 4]  # two restarts at once (the threshold), then doubling up to the cap
    status = sup.stats.snapshot()
    assert status["restarts"] == {"exited": 1, "start-failed": 4}
    assert status["server_up"] and status["recoveries"] == {"restart": 1}


def test_a_server_that_dies_during_a_repair_is_an_exited_restart_not_a_failed_reload():
    """A reload that does not repair restarts the server: counted as a failed reload while the
    server runs, but as "exited", with its signal, when the server itself died meanwhile (a crash
    during the repair, seen in CI: the restart was miscounted and its cause hidden)."""
    import signal

    from trtserve_server import supervisor as sv

    class Crashed(_FakeProcess):
        def poll(self):
            return -signal.SIGSEGV

    server = _FakeServer(failures=0)
    sup = sv.Supervisor(server, sv.SupervisorSettings())
    server.process = Crashed()
    sup._restart_after_reload("reload of embed did not restore embed: connection lost")
    server.process = _FakeProcess()  # running (the restarted one)
    sup._restart_after_reload("reload of embed did not restore embed: timeout")
    status = sup.stats.snapshot()
    assert status["restarts"] == {"exited": 1, "reload-failed": 1}
    assert server.starts == 2


def test_the_supervisor_refuses_a_server_without_the_key():
    from trtserve_server.supervisor import Supervisor

    server = _FakeServer(0)
    server.admin_key = None
    with pytest.raises(ValueError, match="admin_key"):
        Supervisor(server)


class _TimingOutProber:
    """Every probe waits ``seconds`` and times out (a deployment that answers nothing)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def probe(self, deployment, timeout_s=None):
        from trtserve_server.probes import ProbeResult

        time.sleep(self.seconds)
        return ProbeResult(deployment.name, Outcome.TIMEOUT, self.seconds,
                           RequestTimeoutError("Deadline Exceeded", status="StatusCode.DEADLINE_EXCEEDED"))


@pytest.mark.parametrize("work, repaired", [("while True: pass", False), ("import time; time.sleep(60)", True)],
                         ids=["computing-is-busy", "idle-is-hung"])
def test_probe_timeouts_count_as_a_hang_only_when_the_stubs_compute_nothing(work, repaired):
    """One long request (a question-answering context of ~90 windows) keeps the encoder busy for
    seconds with nothing answered: its stub's CPU time says busy, not hung. An idle stub that
    lets every probe time out is repaired after ``hang_confirmations`` timeouts."""
    from trtserve_server import supervisor as sv
    from trtserve_server.processes import cpu_seconds

    # the stand-in says when its interpreter is up: starting Python takes tens of ms of CPU (more on
    # a loaded 2-core machine), which inside the first probe's window reads as a busy stub
    stand_in = subprocess.Popen([sys.executable, "-c", f"print('up', flush=True)\n{work}"], stdout=subprocess.PIPE, text=True)
    try:
        assert stand_in.stdout.readline().strip() == "up"
        sup = sv.Supervisor(_FakeServer(0), sv.SupervisorSettings(hang_confirmations=3, busy_cpu_s=0.05))
        sup.server.start()
        sup._prober = _TimingOutProber(0.6)
        sup._known_stubs = {"qa_encoder_0_0": stand_in.pid}
        repairs = []
        sup._repair = lambda deployment, result, stuck, detected: repairs.append(deployment.name)
        qa = Deployment("qa", "question_answering", ("qa", "qa_tokenizer", "qa_encoder", "qa_postprocess"))
        for _ in range(3):
            sup._check(qa, "interval")
        assert cpu_seconds(stand_in.pid) is not None
        assert repairs == (["qa"] if repaired else []), repairs
    finally:
        stand_in.kill()
        stand_in.wait()
    assert cpu_seconds(stand_in.pid) is None  # gone


def test_a_repository_call_is_given_up_when_the_server_dies_meanwhile():
    """A real child process stands in for tritonserver: it is killed while a 'load' blocks; the
    supervisor's call returns at once with the cause instead of waiting out the load's timeout."""
    from trtserve_server.processes import while_alive

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        def load():  # blocks like a load whose server crashed
            time.sleep(30)

        killer = subprocess.Popen([sys.executable, "-c", f"import os, signal, time; time.sleep(0.3); os.kill({child.pid}, signal.SIGSEGV)"])
        started = time.monotonic()
        with pytest.raises(OSError, match="tritonserver exited \\(killed by SIGSEGV\\) during the load of sentiment"):
            while_alive(child, "the load of sentiment", load)
        assert time.monotonic() - started < 5
        killer.wait()
    finally:
        child.kill()
        child.wait()
    # a live server: the call's own value and errors come through unchanged
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert while_alive(live, "x", lambda a, b=0: a + b, 2, b=3) == 5
        with pytest.raises(ValueError, match="bad model"):
            while_alive(live, "x", lambda: (_ for _ in ()).throw(ValueError("bad model")))
    finally:
        live.kill()
        live.wait()


class _CrashingServer(_FakeServer):
    """The first start crashes (killed by SIGABRT) ``crashes`` times, then comes up."""

    def __init__(self, crashes: int, code: int = -6) -> None:
        super().__init__(failures=0)
        self.crashes, self.code = crashes, code

    def wait_ready(self, timeout_s, abort_if=None):
        from trtserve_server.embedded import ServerError

        if self.starts <= self.crashes:
            self.process.returncode = self.code
            raise ServerError(f"tritonserver exited with code {self.code} before it was ready")
        return []


def test_a_crash_while_loading_is_started_again_but_an_error_exit_is_not():
    from trtserve_server.embedded import ServerError
    from trtserve_server.supervisor import Supervisor

    crashing = _CrashingServer(crashes=2)
    assert Supervisor(crashing).start_first(attempts=3) == [] and crashing.starts == 3 and crashing.kills == 2
    with pytest.raises(ServerError):
        Supervisor(_CrashingServer(crashes=3)).start_first(attempts=3)
    broken = _CrashingServer(crashes=1, code=1)  # e.g. a model config error with --exit-on-error
    with pytest.raises(ServerError):
        Supervisor(broken).start_first(attempts=3)
    assert broken.starts == 1
