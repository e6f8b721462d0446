"""Load tests for the trtserve ensembles: Locust users (locustfile.py), a step shape
(shape_step.py), the request mix and corpus (workload.py), Triton's metrics (triton_metrics.py),
report reading, knee and SLO gate (report.py), and the `make loadtest` front door (run.py);
fault injection (faults.py) and `make chaos`, retrying load while faults hit the supervised
server (chaos.py)."""
