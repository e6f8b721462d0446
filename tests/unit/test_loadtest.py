"""Load-test pieces without a server: corpus and request mix, Triton metrics, Locust report
reading, knee and SLO gate, the Locust command line, and the compose health check."""
from __future__ import annotations

import argparse
import csv
import json
import random
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from loadtest import report, run, triton_metrics
from loadtest.workload import DEFAULT_CORPUS, RequestMix, WorkloadError, load_corpus, request_name

from ..conftest import REPO_ROOT

# ---- corpus and request mix ---------------------------------------------------------------


def test_shipped_corpus_has_real_lengths():
    texts = load_corpus()
    assert len(texts) == 2000 and len(set(texts)) > 1900
    words = sorted(len(t.split()) for t in texts)
    assert words[0] < 5 and words[len(words) // 2] > 10 and words[-1] > 40  # short to long, like reviews
    assert (DEFAULT_CORPUS.parent / "README.md").read_text().count("MIT") >= 1


def test_any_text_file_is_a_corpus(tmp_path):
    path = tmp_path / "texts.txt"
    path.write_text("first text\n\n   \n  second text  \nthird\n", encoding="utf-8")
    assert load_corpus(path) == ["first text", "second text", "third"]
    assert load_corpus(path, max_texts=2) == ["first text", "second text"]


@pytest.mark.parametrize("content, message", [(None, "not found"), (b"\xff\xfe\xfa", "not UTF-8"), (b"\n \n", "no non-blank")])
def test_unusable_corpus_files_are_named(tmp_path, content, message):
    path = tmp_path / "corpus.txt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(WorkloadError, match=message):
        load_corpus(path)


def test_request_mix_sizes_and_models():
    corpus = [f"text {i}" for i in range(100)]
    rng = random.Random(3)
    mix = RequestMix(models=("sentiment", "embed"), batch_size=8, batch_fraction=0.25)
    requests = [mix.next_request(corpus, rng) for _ in range(4000)]
    sizes = [len(texts) for _, texts in requests]
    assert set(sizes) == {1, 8}
    assert 0.22 < sizes.count(8) / len(sizes) < 0.28
    models = [m for m, _ in requests]
    assert 0.45 < models.count("embed") / len(models) < 0.55
    assert all(t in corpus for _, texts in requests for t in texts)
    single = RequestMix(models=("sentiment",), batch_fraction=0.0)
    assert all(len(single.next_request(corpus, rng)[1]) == 1 for _ in range(100))
    assert request_name("embed", 8) == "embed x8"
    assert RequestMix.parse_models(" sentiment, embed ,") == ("sentiment", "embed")


@pytest.mark.parametrize("kwargs", [{"models": ()}, {"models": ("bad name",)}, {"batch_size": 0},
                                    {"batch_size": True}, {"batch_fraction": 1.5}])
def test_invalid_mix_is_rejected(kwargs):
    with pytest.raises(WorkloadError):
        RequestMix(**kwargs)


# ---- Triton metrics -----------------------------------------------------------------------

BEFORE = """# HELP nv_inference_request_success Number of successful inference requests, all batch sizes
# TYPE nv_inference_request_success counter
nv_inference_request_success{model="sentiment",version="1"} 10
nv_inference_request_success{model="sentiment_encoder",version="1"} 10
nv_inference_request_failure{model="sentiment_encoder",reason="REJECTED",version="1"} 1
nv_inference_request_failure{model="sentiment_encoder",reason="BACKEND",version="1"} 0
nv_inference_count{model="sentiment_encoder",version="1"} 40
nv_inference_exec_count{model="sentiment_encoder",version="1"} 10
nv_inference_queue_duration_us{model="sentiment_encoder",version="1"} 1000
nv_inference_compute_input_duration_us{model="sentiment_encoder",version="1"} 100
nv_inference_compute_infer_duration_us{model="sentiment_encoder",version="1"} 5000
nv_inference_compute_output_duration_us{model="sentiment_encoder",version="1"} 100
nv_inference_request_duration_us{model="sentiment_encoder",version="1"} 7000
nv_cpu_utilization 0.5
"""


def _after():
    return (BEFORE
            .replace('"sentiment",version="1"} 10', '"sentiment",version="1"} 30')
            .replace('"sentiment_encoder",version="1"} 10\n', '"sentiment_encoder",version="1"} 30\n', 1)
            .replace('reason="REJECTED",version="1"} 1', 'reason="REJECTED",version="1"} 6')
            .replace("nv_inference_count{model=\"sentiment_encoder\",version=\"1\"} 40", "nv_inference_count{model=\"sentiment_encoder\",version=\"1\"} 200")
            .replace("nv_inference_exec_count{model=\"sentiment_encoder\",version=\"1\"} 10", "nv_inference_exec_count{model=\"sentiment_encoder\",version=\"1\"} 20")
            .replace("} 1000\n", "} 41000\n").replace("} 5000\n", "} 85000\n").replace("} 7000\n", "} 147000\n")
            + 'nv_inference_request_success{model="embed",version="1"} 0\n')


def test_parse_metrics():
    samples = triton_metrics.parse_metrics(BEFORE)
    assert samples["nv_cpu_utilization"] == {(): 0.5}
    key = (("model", "sentiment_encoder"), ("reason", "REJECTED"), ("version", "1"))
    assert samples["nv_inference_request_failure"][key] == 1.0
    assert triton_metrics.per_model(samples, "nv_inference_request_failure") == {"sentiment_encoder": 1.0}
    with pytest.raises(triton_metrics.MetricsError, match="line 1"):
        triton_metrics.parse_metrics("this is not prometheus\n")


def test_fetch_settled_waits_until_the_request_counters_stop_moving():
    """A Python-backend model reports a request's statistics just after answering it: the scrape
    before (or after) a load-test window waits for the counters to settle."""
    late = BEFORE.replace('nv_inference_request_success{model="sentiment",version="1"} 10',
                          'nv_inference_request_success{model="sentiment",version="1"} 11')
    assert late != BEFORE
    # the CPU gauge moves on every scrape; only the request counters must agree
    texts = iter([BEFORE, late, late.replace("nv_cpu_utilization 0.5", "nv_cpu_utilization 0.7")])
    calls = []

    def fetch(url):
        calls.append(url)
        return next(texts)

    text = triton_metrics.fetch_settled("u", settle_s=0.0, fetch=fetch)
    assert len(calls) == 3 and "nv_cpu_utilization 0.7" in text and "} 11" in text
    moving = iter(BEFORE.replace("} 10\n", f"}} {n}\n") for n in range(10, 10_000))
    text = triton_metrics.fetch_settled("u", settle_s=0.01, max_s=0.05, fetch=lambda url: next(moving))
    assert text  # gives up at max_s with the latest scrape instead of waiting forever


def test_window_breakdown():
    rows = {r.model: r for r in triton_metrics.window(triton_metrics.parse_metrics(BEFORE),
                                                      triton_metrics.parse_metrics(_after()))}
    assert set(rows) == {"sentiment", "sentiment_encoder"}  # embed had no traffic
    enc = rows["sentiment_encoder"]
    assert (enc.requests_ok, enc.requests_failed, enc.rejected) == (20, 5, 5)
    assert enc.avg_batch == pytest.approx(160 / 10)
    assert enc.avg_queue_ms == pytest.approx(40000 / 20 / 1000)
    assert enc.avg_compute_ms == pytest.approx(80000 / 20 / 1000)
    assert enc.avg_request_ms == pytest.approx(140000 / 20 / 1000)
    table = triton_metrics.format_window(list(rows.values()))
    assert "sentiment_encoder" in table and "16.00" in table


# ---- Locust reports -----------------------------------------------------------------------

STATS_HEADER = ["Type", "Name", "Request Count", "Failure Count", "Median Response Time", "Average Response Time",
                "Min Response Time", "Max Response Time", "Average Content Size", "Requests/s", "Failures/s",
                "50%", "66%", "75%", "80%", "90%", "95%", "98%", "99%", "99.9%", "99.99%", "100%"]
HISTORY_HEADER = ["Timestamp", "User Count", "Type", "Name", "Requests/s", "Failures/s", "50%", "66%", "75%", "80%",
                  "90%", "95%", "98%", "99%", "99.9%", "99.99%", "100%", "Total Request Count", "Total Failure Count",
                  "Total Median Response Time", "Total Average Response Time", "Total Min Response Time",
                  "Total Max Response Time", "Total Average Content Size"]


def _write(path: Path, header, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def _stats_row(type_, name, count, fail, rps, p50, p95, p99):
    return [type_, name, count, fail, p50, p50 * 1.1, 1, p99 * 2, 20, rps, 0, p50, 0, 0, 0, 0, p95, 0, p99, 0, 0, p99 * 2]


def test_read_summary(tmp_path):
    prefix = tmp_path / "locust"
    _write(Path(f"{prefix}_stats.csv"), STATS_HEADER, [
        _stats_row("grpc", "sentiment x1", 90, 0, 9.0, 20, 40, 60),
        _stats_row("grpc", "sentiment x8", 10, 2, 1.0, 80, 120, 150),
        _stats_row("", "Aggregated", 100, 2, 10.0, 22, 90, 140),
    ])
    _write(Path(f"{prefix}_failures.csv"), ["Method", "Name", "Error", "Occurrences"],
           [["grpc", "sentiment x8", "ServerOverloadedError: queue full", 2]])
    s = report.read_summary(prefix)
    assert (s.total.requests, s.total.failures, s.total.p95_ms, s.total.p99_ms) == (100, 2, 90, 140)
    assert s.total.failure_rate == pytest.approx(0.02)
    assert [x.name for x in s.by_name] == ["grpc sentiment x1", "grpc sentiment x8"]
    assert s.failures == [{"name": "sentiment x8", "error": "ServerOverloadedError: queue full", "occurrences": 2}]
    d = s.to_dict()
    assert json.loads(json.dumps(d))["p95_ms"] == 90
    with pytest.raises(report.ReportError, match="did not write"):
        report.read_summary(tmp_path / "missing")


def _history(tmp_path, steps):
    """steps: (users, seconds, rps, p95) -> per-second Aggregated rows."""
    rows, t, total = [], 1_000_000, 0
    for users, seconds, rps, p95 in steps:
        for _ in range(seconds):
            t += 1
            total += rps
            rows.append([t, users, "", "Aggregated", rps, 0, 10, 0, 0, 0, 0, p95, 0, 0, 0, 0, 0, total, 0, 0, 0, 0, 0, 0])
            rows.append([t, users, "grpc", "sentiment x1", rps, 0, 10, 0, 0, 0, 0, p95, 0, 0, 0, 0, 0, total, 0, 0, 0, 0, 0, 0])
    prefix = tmp_path / "locust"
    _write(Path(f"{prefix}_stats_history.csv"), HISTORY_HEADER, [[t + 0, 0, "", "Aggregated"] + [0] * 20] + rows)
    return prefix


def test_knee_is_the_last_step_within_target(tmp_path):
    prefix = _history(tmp_path, [(4, 20, 100, 30), (8, 20, 180, 60), (12, 20, 200, 140), (16, 20, 205, 300),
                                 (9, 1, 50, 300), (2, 1, 10, 300)])  # the last two: Locust stopping
    steps = report.read_steps(prefix)
    assert [s.users for s in steps] == [4, 8, 12, 16]
    assert steps[1].rps == pytest.approx(180) and steps[1].p95_ms == 60
    knee = report.find_knee(steps, target_p95_ms=100)
    assert (knee.capacity_rps, knee.knee_users, knee.first_violation_users) == (pytest.approx(180), 8, 12)
    assert knee.max_rps == pytest.approx(205)
    assert report.find_knee(steps, target_p95_ms=10).capacity_rps is None
    assert report.find_knee(steps, target_p95_ms=1000).first_violation_users is None


def test_slo_gate():
    total = report.Latency("Aggregated", requests=1000, failures=3, rps=50, avg_ms=20, p50_ms=15, p95_ms=80, p99_ms=120, max_ms=300)
    assert report.Slo().check(total) == [] and not report.Slo().given
    assert report.Slo(p95_ms=100, failure_rate=0.005, min_requests=500).check(total) == []
    problems = report.Slo(p95_ms=50, failure_rate=0.001, min_requests=2000).check(total)
    assert len(problems) == 3 and "p95 80 ms > 50 ms" in problems


# ---- run.py -------------------------------------------------------------------------------


@pytest.mark.parametrize("text, seconds", [("30s", 30), ("2m", 120), ("1m30s", 90), ("90", 90), ("1h", 3600)])
def test_parse_duration(text, seconds):
    assert run.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "abc", "10x", "m"])
def test_parse_duration_rejects(text):
    with pytest.raises(argparse.ArgumentTypeError):
        run.parse_duration(text)


def _args(*argv):
    args = run.build_parser().parse_args(list(argv))
    args.port = args.port or run.DEFAULT_PORTS[args.protocol]
    return args


def test_locust_command_constant_and_step(tmp_path):
    cmd = run.locust_command(_args("--protocol", "http", "--users", "3", "--run-time", "1m"), tmp_path / "p", tmp_path / "r.html")
    assert cmd[-1] == "HttpTritonUser" and "127.0.0.1:8000" in cmd
    assert cmd[cmd.index("-f") + 1] == str(run.LOCUSTFILE)
    assert cmd[cmd.index("--run-time") + 1] == "60s" and cmd[cmd.index("--users") + 1] == "3"
    assert "--csv-full-history" in cmd and "--headless" in cmd
    step = run.locust_command(_args("--shape", "step", "--step-users", "2", "--step-max-users", "5"), tmp_path / "p", tmp_path / "r.html")
    assert step[-1] == "GrpcTritonUser" and "--run-time" not in step
    assert step[step.index("-f") + 1].endswith("locustfile.py," + str(run.STEP_SHAPE_FILE))
    assert run.planned_seconds(_args("--shape", "step", "--step-users", "2", "--step-max-users", "5", "--step-time", "20")) == 60


def test_user_classes_exist_in_the_locustfile():
    text = (REPO_ROOT / "loadtest" / "locustfile.py").read_text()
    for name in run.USER_CLASSES.values():
        assert f"class {name}(TritonUser)" in text
    assert text.index("init_gevent()") < text.index("from locust import User")


def test_bad_options_exit_2_before_any_load(tmp_path, capsys):
    assert run.main(["--corpus", str(tmp_path / "nope.txt"), "--results", str(tmp_path / "r")]) == run.EXIT_BROKEN
    assert "corpus file not found" in capsys.readouterr().err
    assert run.main(["--shape", "step", "--step-time", "5", "--results", str(tmp_path / "r")]) == run.EXIT_BROKEN
    assert "--step-time" in capsys.readouterr().err



def test_a_finished_locust_run_exits_even_when_the_interpreter_would_hang(tmp_path):
    """A real headless Locust run whose interpreter exit waits forever on a non-daemon thread (as
    tritonclient's gRPC stream threads under gevent once did in CI): the exit watchdog dumps every
    thread's stack and ends the process with Locust's own exit code, soon after the grace period."""
    import os
    import subprocess
    import sys

    stuck = tmp_path / "stuck_user.py"
    stuck.write_text(
        "import threading\n"
        "from locust import User, events, task\n"
        "from loadtest import exit_watchdog\n"
        "exit_watchdog.install(events, grace_s=2.0)\n"
        "@events.quit.add_listener\n"
        "def hang_interpreter_exit(**_kw):\n"
        "    forever = threading.Event()\n"
        "    threading.Thread(target=forever.wait).start()  # non-daemon: sys.exit joins it\n"
        "class Idle(User):\n"
        "    def wait_time(self):\n"
        "        return 0.2\n"
        "    @task\n"
        "    def nothing(self):\n"
        "        pass\n")
    locust = Path(sys.executable).with_name("locust")
    started = time.monotonic()
    proc = subprocess.run([str(locust), "-f", str(stuck), "--headless", "-u", "1", "-r", "1", "-t", "1s",
                           "--only-summary"], capture_output=True, text=True, timeout=120, cwd=REPO_ROOT,
                          env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "forcing exit 0" in proc.stderr and "Thread" in proc.stderr  # the stacks came with it
    assert time.monotonic() - started < 60


def test_the_exit_watchdog_exits_1_when_locust_never_chose_a_code():
    from loadtest.exit_watchdog import ExitWatchdog

    codes = []
    watchdog = ExitWatchdog(grace_s=0.05, exit=codes.append)
    watchdog.arm()
    watchdog.arm()  # once only
    deadline = time.monotonic() + 5
    while not codes and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)
    assert codes == [1]
    watchdog.record(exit_code=3)
    watchdog.fire()
    assert codes == [1, 3]


# ---- the compose health check -------------------------------------------------------------


def _load_healthcheck():
    import importlib.util

    spec = importlib.util.spec_from_file_location("healthcheck", REPO_ROOT / "deploy" / "healthcheck.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def fake_triton():
    state = {"ready": 200, "infer": 200, "infer_body": None, "delay_s": 0.0, "bodies": []}

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def _reply(self, code, body=b""):
            self.send_response(code)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            self._reply(state["ready"] if self.path == "/v2/health/ready" else 404)

        def do_POST(self):
            state["bodies"].append((self.path, json.loads(self.rfile.read(int(self.headers["Content-Length"])))))
            time.sleep(state["delay_s"])
            out = json.dumps({"outputs": [{"name": "LABEL", "data": ["positive"]}]}).encode()
            self._reply(state["infer"], out if state["infer"] == 200 else (state["infer_body"] or b'{"error":"stub died"}'))

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state["url"] = f"127.0.0.1:{server.server_address[1]}"
    yield state
    server.shutdown()


def test_healthcheck_needs_ready_and_real_answers(fake_triton):
    hc = _load_healthcheck()
    url = fake_triton["url"]
    assert hc.main(["--url", url, "--models", "sentiment,embed"]) == 0
    paths = sorted(p for p, _ in fake_triton["bodies"])
    assert paths == ["/v2/models/embed/infer", "/v2/models/sentiment/infer"]
    assert fake_triton["bodies"][0][1]["inputs"][0]["name"] == "TEXT"
    fake_triton["infer"] = 500  # ready, but the model fails: a dead Python stub
    assert hc.main(["--url", url, "--models", "sentiment"]) == 1
    fake_triton["ready"], fake_triton["infer"] = 503, 200
    assert hc.main(["--url", url, "--models", "sentiment"]) == 1
    assert hc.check("http://127.0.0.1:1", ["sentiment"], 1.0)[0].startswith("server unreachable")


@pytest.mark.parametrize("message, healthy", [
    (b'{"error":"in ensemble \'sentiment\', Request timeout expired"}', True),
    (b'{"error":"[request id: <id_unknown>] Exceeds maximum queue size"}', True),
    (b'{"error":"Request for unknown model: \'sentiment\' version 1 is not at ready state"}', False),
])
def test_healthcheck_counts_a_queue_rejection_as_busy_not_dead(fake_triton, message, healthy):
    """Under overload the bounded queues answer 503 "Request timeout expired": alive, not dead."""
    hc = _load_healthcheck()
    fake_triton["infer"], fake_triton["infer_body"] = 503, message
    assert hc.main(["--url", fake_triton["url"], "--models", "sentiment,embed"]) == (0 if healthy else 1)


def test_healthcheck_answers_within_its_deadline(fake_triton):
    """Models are probed at once and the whole check ends by --deadline (below compose's 10 s)."""
    hc = _load_healthcheck()
    fake_triton["delay_s"] = 0.6
    start = time.monotonic()
    assert hc.main(["--url", fake_triton["url"], "--models", "a,b,c,d", "--deadline", "3"]) == 0
    assert time.monotonic() - start < 1.5, "four 0.6 s probes must run concurrently"
    fake_triton["delay_s"] = 3.0
    start = time.monotonic()
    assert hc.main(["--url", fake_triton["url"], "--models", "a,b,c", "--deadline", "1"]) == 1
    assert time.monotonic() - start < 2.0


# ---- overload outcome accounting ------------------------------------------------------------


@pytest.mark.parametrize("status, message, outcome", [
    (None, None, "answered"),
    ("StatusCode.UNAVAILABLE", "in ensemble 'sentiment', [request id: <id_unknown>] Exceeds maximum queue size",
     "rejected_queue_full"),
    ("StatusCode.UNAVAILABLE", "in ensemble 'sentiment', Request timeout expired", "rejected_queue_timeout"),
    ("StatusCode.DEADLINE_EXCEEDED", "Deadline Exceeded", "lost"),
    ("StatusCode.UNAVAILABLE", "failed to connect to all addresses", "lost"),
    ("StatusCode.INTERNAL", "Python stub exited", "failed"),
])
def test_overload_outcomes(status, message, outcome):
    from tritonclient.utils import InferenceServerException

    from loadtest.overload import classify

    error = None if message is None else InferenceServerException(message, status=status)
    assert classify(error) == outcome


def test_overload_summary_counts():
    from loadtest.overload import Outcomes, summarize

    o = Outcomes(answered=[10.0] * 98 + [500.0, 900.0], rejected_queue_full=[1.0] * 50,
                 rejected_queue_timeout=[2000.0] * 5)
    s = summarize(o, offered_rate=100, offered_s=1.5, total_s=2.0)
    assert (s["sent"], s["accepted"], s["rejected"], s["answered"], s["lost"]) == (155, 100, 55, 100, 0)
    assert s["accepted_p99_ms"] == pytest.approx(504.0) and s["accepted_max_ms"] == 900.0
