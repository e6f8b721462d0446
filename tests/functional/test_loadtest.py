"""`make loadtest` in miniature: Locust (headless, child process) against the real server.

Asserts that the reports are written, that nothing failed and enough was sent, and that the
server-side breakdown agrees with the client's count; never a speed (the machine is shared).
"""
from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest

from loadtest import run, triton_metrics

from .conftest import served_models

REPO_ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = REPO_ROOT / "deploy" / "grafana" / "dashboards" / "triton.json"
#: Exported only with a GPU (this machine has none); everything else must exist here.
GPU_ONLY_METRICS = {"nv_gpu_utilization", "nv_gpu_memory_used_bytes", "nv_gpu_memory_total_bytes",
                    "nv_gpu_power_usage", "nv_energy_consumption"}


def _run(server, tmp_path, protocol, *extra):
    port = server.ports.grpc if protocol == "grpc" else server.ports.http
    results = tmp_path / protocol
    code = run.main([
        "--host", server.host, "--protocol", protocol, "--port", str(port),
        "--metrics-port", str(server.ports.metrics), "--users", "4", "--spawn-rate", "4",
        "--run-time", "6s", "--results", str(results), "--ready-timeout", "60", *extra,
    ])
    data = json.loads((results / "summary.json").read_text()) if (results / "summary.json").exists() else None
    return code, results, data


def _client_counts(results: Path) -> dict[str, int]:
    """Requests per model from Locust's stats CSV (names are '<model> x<texts>')."""
    counts: dict[str, int] = {}
    with open(results / "locust_stats.csv", newline="") as f:
        for row in csv.DictReader(f):
            if row["Name"] != "Aggregated":
                model = row["Name"].split(" ")[0]
                counts[model] = counts.get(model, 0) + int(row["Request Count"])
    return counts


def test_grpc_run_writes_reports_and_matches_the_server(server, tmp_path):
    code, results, data = _run(server, tmp_path, "grpc", "--slo-failure-rate", "0", "--slo-min-requests", "20")
    assert code == 0, (results / "locust.log").read_text()[-3000:]
    for name in ("report.html", "locust_stats.csv", "locust_stats_history.csv", "locust_failures.csv",
                 "summary.txt", "metrics_before.prom", "metrics_after.prom"):
        assert (results / name).stat().st_size > 0, name
    s = data["summary"]
    assert s["failures"] == 0 and s["requests"] >= 20
    assert {"grpc sentiment x1", "grpc embed x1"} <= {x["name"] for x in s["by_name"]}
    assert s["p50_ms"] > 0 and s["p99_ms"] >= s["p95_ms"] >= s["p50_ms"]
    # Little's law: 4 closed-loop users keep ~4 requests in flight. Without init_gevent() the
    # gRPC users would take turns (about 1 in flight) with misleadingly low latency.
    assert s["rps"] * s["avg_ms"] / 1000.0 > 2.0, (s["rps"], s["avg_ms"])
    server_side = {row["model"]: row for row in s["server"]}
    for model, count in _client_counts(results).items():
        assert server_side[model]["requests_ok"] == count, (model, server_side[model], count)
        encoder = server_side[served_models(server, model)["engine"]]
        assert encoder["executions"] > 0 and encoder["avg_batch"] >= 1.0
        assert encoder["avg_compute_ms"] > 0
    assert data["slo"]["passed"] is True


def test_http_run_and_the_slo_gate(server, tmp_path):
    code, results, data = _run(server, tmp_path, "http", "--slo-p95-ms", "0.001", "--models", "sentiment",
                               "--batch-fraction", "0.5", "--batch-size", "4")
    assert code == run.EXIT_SLO, "a p95 target of 0.001 ms cannot be met"
    s = data["summary"]
    assert s["failures"] == 0 and s["requests"] >= 10
    assert {x["name"] for x in s["by_name"]} == {"http sentiment x1", "http sentiment x4"}
    assert data["slo"]["passed"] is False and "p95" in data["slo"]["problems"][0]
    assert "SLO gate FAILED" in (results / "summary.txt").read_text()


def test_unreachable_server_is_a_clear_error(tmp_path, capsys):
    from trtserve_server.embedded import free_port

    code = run.main(["--port", str(free_port()), "--ready-timeout", "0", "--results", str(tmp_path / "r")])
    assert code == run.EXIT_BROKEN
    assert "make serve" in capsys.readouterr().err


def _compose_triton_flags() -> list[str]:
    """The tritonserver flags of the compose GPU image that apply to any server (not paths/ports)."""
    from ..compose_tools import dockerfile_cmd

    command = dockerfile_cmd(REPO_ROOT / "deploy" / "triton.gpu.Dockerfile")
    keep = ("--metrics-config", "--backend-config", "--model-control-mode", "--strict-readiness", "--rate-limit")
    return [arg for arg in command if arg.startswith(keep)]


def test_compose_flags_load_and_dashboard_metrics_exist(cpu_repository, tmp_path):
    """Triton (the embedded 2.51) accepts the compose file's server flags, and with them it
    exports every metric the Grafana dashboard and the load-test breakdown query (GPU metrics
    excepted: no GPU here)."""
    from trtserve_server.embedded import EmbeddedServer, Ports

    flags = _compose_triton_flags()
    assert any(f.startswith("--metrics-config=summary_latencies=true") for f in flags)
    with EmbeddedServer(cpu_repository, Ports.free(), log_path=tmp_path / "triton.log", extra_args=flags) as srv:
        srv.wait_ready(timeout_s=180)
        srv.infer_text("sentiment", ["the summaries need one request"])
        exported = set(triton_metrics.scrape(f"http://{srv.host}:{srv.ports.metrics}/metrics"))
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    used = {m for e in exprs for m in re.findall(r"\b(nv_[a-z_]+)\b", e)}
    assert used, "the dashboard has no Triton queries"
    missing = sorted(m for m in used - GPU_ONLY_METRICS if m not in exported)
    assert not missing, f"dashboard queries metrics Triton does not export: {missing}"
    assert set(triton_metrics.MODEL_METRICS) <= exported
    assert used & GPU_ONLY_METRICS, "the dashboard should show GPU utilization"


def test_compose_healthcheck_passes_against_the_real_server(server):
    import importlib.util

    spec = importlib.util.spec_from_file_location("healthcheck", REPO_ROOT / "deploy" / "healthcheck.py")
    healthcheck = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(healthcheck)
    assert healthcheck.main(["--url", server.http_url, "--models", "sentiment,embed,qa,ner"]) == 0  # qa: QUESTION + CONTEXT
    assert healthcheck.main(["--url", server.http_url, "--models", "no_such_model"]) == 1
