"""A/B the per-execution phase times (read, tokenize, engine, postprocess, respond) of one-model
repositories under many concurrent single-text requests.

Each round serves every repository in turn (a fresh embedded Triton with
``TRTSERVE_PHASE_TIMES=1``), drives it with ``--concurrency`` requests in flight from one asyncio
gRPC client for ``--seconds``, stops it and reads the model's phase line from the Triton log;
requests per execution come from Triton's statistics. Every classification answer is checked
against itself (LABEL is the label of the largest of PROBABILITIES, SCORE that value): ``wrong``
counts the answers that are not. Rounds alternate the variants, so the
drift of a shared machine hits them alike; medians over rounds are printed (µs per execution,
and respond/read per request) and written as JSON with ``--out``.

    # B: the same repository with another copy of the backend package
    cp -r /tmp/a /tmp/b && rm -r /tmp/b/sentiment/1/trtserve_backend && \
        cp -r serve/trtserve_backend /tmp/b/sentiment/1/
    python -m bench.respond_ab /tmp/a /tmp/b --rounds 5 --concurrency 64 --seconds 8
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from trtserve_server.embedded import EmbeddedServer, Ports

PHASE_LINE = re.compile(r"(\w+) phase times: (\d+) executions, us per execution: ([^\"\n]*)")


def consistent(result, labels: list[bytes]) -> bool:
    """A classification answer agrees with itself: LABEL = labels[argmax PROBABILITIES], SCORE = max."""
    probs = result.as_numpy("PROBABILITIES")
    return (result.as_numpy("LABEL").tolist() == [[labels[int(probs.argmax())]]]
            and float(result.as_numpy("SCORE")[0, 0]) == float(probs.max()))


async def drive(url: str, model: str, texts: list[str], concurrency: int, seconds: float) -> tuple[int, int, int]:
    """``concurrency`` requests always in flight for ``seconds``: (answered, failed, wrong)."""
    import tritonclient.grpc.aio as grpcclient

    client = grpcclient.InferenceServerClient(url)
    config = (await client.get_model_config(model, as_json=True))["config"]
    labels = [n.encode() for n in json.loads(config.get("parameters", {}).get("labels", {}).get("string_value", "[]"))]
    done = failed = wrong = 0
    deadline = time.perf_counter() + seconds

    async def worker(k: int) -> None:
        nonlocal done, failed, wrong
        while time.perf_counter() < deadline:
            inp = grpcclient.InferInput("TEXT", [1, 1], "BYTES")
            inp.set_data_from_numpy(np.array([[texts[k % len(texts)].encode()]], dtype=np.object_))
            try:
                result = await client.infer(model, [inp])
                done += 1
                wrong += bool(labels) and not consistent(result, labels)
            except Exception:  # noqa: BLE001 - counted, reported
                failed += 1
            k += concurrency

    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    await client.close()
    return done, failed, wrong


def statistics_of(server: EmbeddedServer, model: str) -> tuple[int, int]:
    """(inference count, execution count) of ``model`` so far."""
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(server.grpc_url)
    stats = client.get_inference_statistics(model, as_json=True)["model_stats"][0]
    client.close()
    return int(stats.get("inference_count", 0)), int(stats.get("execution_count", 0))


def one_run(repository: Path, model: str, texts: list[str], args, log: Path) -> dict:
    os.environ["TRTSERVE_PHASE_TIMES"] = "1"
    with EmbeddedServer(repository, ports=Ports.free(), log_path=log) as server:
        server.wait_ready(120)
        start = time.perf_counter()
        done, failed, wrong = asyncio.run(drive(server.grpc_url, model, texts, args.concurrency, args.seconds))
        elapsed = time.perf_counter() - start
        inferences, executions = statistics_of(server, model)
    lines = [m for m in PHASE_LINE.finditer(log.read_text(errors="replace")) if m.group(1) == model]
    if len(lines) != 1:
        raise RuntimeError(f"{len(lines)} phase lines for {model} in {log}, expected one")
    phases = {k: float(v) for k, v in (kv.split("=") for kv in lines[0].group(3).split())}
    per_execution = inferences / max(1, executions)
    return {"requests_per_s": done / elapsed, "failed": failed, "wrong": wrong, "requests_per_execution": per_execution,
            **{f"{k}_us": v for k, v in phases.items()},
            **{f"{k}_us_per_request": phases[k] / per_execution for k in ("read", "respond") if k in phases}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("repositories", nargs="+", type=Path)
    parser.add_argument("--model", default="sentiment")
    parser.add_argument("--texts", type=Path, default=Path(".device/data/texts.txt"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    texts = [t for t in args.texts.read_text().splitlines() if t.strip()]
    runs: dict[str, list[dict]] = {str(r): [] for r in args.repositories}
    with tempfile.TemporaryDirectory(prefix="respond_ab_") as tmp:
        for round_ in range(args.rounds):
            for repo in args.repositories:
                row = one_run(repo, args.model, texts, args, Path(tmp) / "triton.log")
                runs[str(repo)].append(row)
                print(f"round {round_} {repo}: " + " ".join(f"{k}={v:.1f}" for k, v in row.items()), flush=True)
    medians = {repo: {k: statistics.median(r[k] for r in rows) for k in rows[0]} for repo, rows in runs.items()}
    for repo, m in medians.items():
        print(f"median {repo}: " + " ".join(f"{k}={v:.1f}" for k, v in m.items()))
    if args.out:
        args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                        "runs": runs, "medians": medians}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
