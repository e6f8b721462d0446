"""Container health check of the `triton` service: ready, and every model answers a real text.

``/v2/health/ready`` alone is not enough: a Python-backend stub that died is not restarted and
the server keeps saying "ready" while every request through that model fails. So after the
readiness check this sends one short text through each deployment (tokenizer, engine,
postprocess: an ensemble or one Python model), into every input its config names, all at once,
and requires a 200 with outputs.

A busy server is not a dead one: when a bounded queue rejects the probe (HTTP 503 "Request
timeout expired" or "Exceeds maximum queue size", the specs' overload protection), the server
did answer, so the model counts as alive. Everything finishes within ``--deadline`` seconds
(default 8), below the compose health check's ``timeout: 10s``, whatever the number of models.
Standard library only: it runs with the image's own ``python3``; also the exec probe of the
Kubernetes manifests.

    python3 healthcheck.py --url 127.0.0.1:8000 --models sentiment,embed,qa,ner
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

PROBE_TEXT = "trtserve health check"
#: Triton's messages when a bounded queue turns a request away (overload, not failure).
BUSY_MESSAGES = ("Request timeout expired", "Exceeds maximum queue size")


def _request(url: str, body: dict | None, timeout_s: float) -> tuple[int, bytes]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method="POST" if data else "GET",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def is_busy(status: int, payload: bytes) -> bool:
    """A queue rejection: the server is alive and overloaded."""
    return status == 503 and any(m.encode() in payload for m in BUSY_MESSAGES)


def input_names(base: str, model: str, timeout_s: float) -> list[str]:
    """The model's inputs from its config (TEXT; QUESTION and CONTEXT for qa); TEXT when the
    config cannot be read (the inference below then says what is wrong)."""
    status, config = _request(f"{base}/v2/models/{model}/config", None, timeout_s)
    names = [i["name"] for i in json.loads(config).get("input", [])] if status == 200 else []
    return names or ["TEXT"]


def probe_model(base: str, model: str, timeout_s: float) -> str | None:
    """None when the model answered (or its queue turned the probe away), else the problem.
    The probe text goes into every input the model takes."""
    end = time.monotonic() + timeout_s
    try:
        names = input_names(base, model, timeout_s)
        body = {"inputs": [{"name": n, "shape": [1, 1], "datatype": "BYTES", "data": [PROBE_TEXT]} for n in names]}
        status, payload = _request(f"{base}/v2/models/{model}/infer", body, max(0.1, end - time.monotonic()))
    except (OSError, ValueError) as e:
        return f"{model}: {e}"
    if is_busy(status, payload):
        print(f"busy: {model}: {payload[:200].decode(errors='replace')}", file=sys.stderr)
        return None
    if status != 200:
        return f"{model}: HTTP {status} {payload[:200]!r}"
    if not json.loads(payload).get("outputs"):
        return f"{model}: answer without outputs"
    return None


def check(base: str, models: list[str], deadline_s: float) -> list[str]:
    """Problems found (empty when healthy), all within ``deadline_s`` seconds."""
    end = time.monotonic() + deadline_s
    try:
        status, _ = _request(f"{base}/v2/health/ready", None, max(0.1, end - time.monotonic()))
    except OSError as e:
        return [f"server unreachable at {base}: {e}"]
    if status != 200:
        return [f"/v2/health/ready answered {status}"]
    remaining = max(0.1, end - time.monotonic())
    with ThreadPoolExecutor(max_workers=max(1, len(models))) as pool:
        results = list(pool.map(lambda m: probe_model(base, m, remaining), models))
    return [r for r in results if r]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="127.0.0.1:8000", help="Triton HTTP host:port")
    parser.add_argument("--models", default=os.environ.get("TRTSERVE_MODELS", "sentiment,embed,qa,ner"))
    parser.add_argument("--deadline", type=float, default=8.0,
                        help="seconds for the whole check (keep it below the health check's timeout)")
    args = parser.parse_args(argv)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    problems = check(f"http://{args.url}", models, args.deadline)
    for problem in problems:
        print(f"unhealthy: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
