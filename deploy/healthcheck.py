"""Container health check for the `triton` service: ready, and every model answers a real text.

``/v2/health/ready`` alone is not enough: a Python-backend stub that died is not restarted and
the server keeps saying "ready" while every request through that model fails. So after the
readiness check this sends one short text through each ensemble (tokenizer, engine,
postprocess) and requires a 200 with outputs. Standard library only: it runs with the
image's own ``python3``.

    python3 healthcheck.py --url 127.0.0.1:8000 --models sentiment,embed,qa,ner
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request

PROBE_TEXT = "trtserve health check"


def _request(url: str, body: dict | None, timeout_s: float) -> tuple[int, bytes]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method="POST" if data else "GET",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def check(base: str, models: list[str], timeout_s: float) -> list[str]:
    """Problems found (empty when healthy)."""
    try:
        status, _ = _request(f"{base}/v2/health/ready", None, timeout_s)
    except OSError as e:
        return [f"server unreachable at {base}: {e}"]
    if status != 200:
        return [f"/v2/health/ready answered {status}"]
    problems = []
    for model in models:
        try:
            # the probe text in every input the ensemble takes (TEXT; QUESTION and CONTEXT for qa)
            status, config = _request(f"{base}/v2/models/{model}/config", None, timeout_s)
            names = [i["name"] for i in json.loads(config).get("input", [])] if status == 200 else []
            names = names or ["TEXT"]
            body = {"inputs": [{"name": n, "shape": [1, 1], "datatype": "BYTES", "data": [PROBE_TEXT]} for n in names]}
            status, payload = _request(f"{base}/v2/models/{model}/infer", body, timeout_s)
        except (OSError, ValueError) as e:
            problems.append(f"{model}: {e}")
            continue
        if status != 200:
            problems.append(f"{model}: HTTP {status} {payload[:200]!r}")
        elif not json.loads(payload).get("outputs"):
            problems.append(f"{model}: answer without outputs")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", default="127.0.0.1:8000", help="Triton HTTP host:port")
    parser.add_argument("--models", default=os.environ.get("TRTSERVE_MODELS", "sentiment,embed,qa,ner"))
    parser.add_argument("--timeout", type=float, default=4.0)
    args = parser.parse_args(argv)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    problems = check(f"http://{args.url}", models, args.timeout)
    for problem in problems:
        print(f"unhealthy: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
