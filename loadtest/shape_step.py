"""Step load shape: add ``--step-users`` users every ``--step-time`` seconds up to
``--step-max-users``, then stop. Loaded beside the users' file:

    locust -f loadtest/locustfile.py,loadtest/shape_step.py --host 127.0.0.1:8001 GrpcTritonUser \
        --headless --csv results/x/locust --csv-full-history

Each step holds its user count long enough for Locust's 10-second "current" percentile window
to see only that step; loadtest/report.py reads the per-second history and finds the knee: the
highest throughput whose p95 stays within the target (``run.py --knee-p95-ms``).
"""
from __future__ import annotations

import math

from locust import LoadTestShape


class StepLoadShape(LoadTestShape):
    """Users ``k * step_users`` during step ``k = 1..n``; spawned within a second or two."""

    def steps(self) -> int:
        o = self.runner.environment.parsed_options
        return max(1, math.ceil(o.step_max_users / o.step_users))

    def tick(self):
        o = self.runner.environment.parsed_options
        run_time = self.get_run_time()
        step = int(run_time // o.step_time) + 1
        if step > self.steps():
            return None
        users = min(step * o.step_users, o.step_max_users)
        return users, max(float(o.step_users), users / 2.0)
