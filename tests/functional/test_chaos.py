"""A short `make chaos` (issue 15): steady retrying load while faults hit the supervised server.

25 s, 4 clients (gRPC and HTTP, both deployments), a fault every 3-5 s from a shuffled cycle over
every kind; no request may be lost, none may fail after retries, every fault must be recovered
within the hard limit, and the server must stop cleanly. `make chaos` runs the long version.
"""
from __future__ import annotations

import json

from loadtest.chaos import main


def test_short_chaos_run_loses_and_fails_nothing(cpu_repository, tmp_path):
    out = tmp_path / "chaos.json"
    code = main(["--repository", str(cpu_repository), "--duration", "25", "--clients", "4", "--rate", "4",
                 "--min-gap", "3", "--max-gap", "5", "--quiet-tail", "6", "--seed", "7",
                 "--out", str(out), "--log", str(tmp_path / "serve.log")])
    report = json.loads(out.read_text())
    print(json.dumps({k: report[k] for k in ("requests", "faults", "errors")}, indent=1))
    requests = report["requests"]
    assert requests["sent"] > 100 and requests["answered"] == requests["sent"]
    assert requests["lost"] == 0 and requests["failed"] == 0
    assert len(report["faults"]) >= 2 and all(f["recovery_s"] is not None and f["recovery_s"] <= 30
                                               for f in report["faults"])
    # the supervisor saw the faults, not just the clients: a probe failed, or a stub was found
    # lost while another instance of its model answered ("auto" gives several)
    assert report["supervisor"]["probe_failures"] or report["supervisor"]["instances_lost"]
    assert report["supervisor"]["reloads"] or report["supervisor"]["restarts_total"]
    assert report["server_stop"] == {"exit_code": 0, "processes_left": 0}
    assert code == 0
