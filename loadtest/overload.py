"""Overload benchmark: offer 2x the measured capacity and count what happens to every request.

    python -m bench.overload                     # own server on model_repository/cpu (make overload)
    python -m bench.overload --url 127.0.0.1:8001 --metrics-url http://127.0.0.1:8002/metrics

1. capacity: ``--capacity-concurrency`` closed-loop gRPC clients send single real texts to
   ``--model`` for ``--capacity-seconds``; capacity = answered requests per second;
2. overload: an open-loop generator sends ``--factor`` x capacity requests per second, evenly
   spaced, for ``--seconds``, whatever the server answers (closed-loop clients cannot overload
   a server: they slow down with it); a probe checks ``ServerReady`` every 0.25 s meanwhile;
3. drain: every request is awaited up to the client timeout (``--timeout``, far above the
   spec's queue timeouts), so each one ends as exactly one of:

   - ``answered``: a successful response;
   - ``rejected``: refused by the server with UNAVAILABLE, either at the door ("Exceeds maximum
     queue size") or after waiting its queue timeout ("Request timeout expired");
   - ``failed``: answered with any other error (should not happen);
   - ``lost``: no answer at all within the client timeout (must not happen).

   ``accepted = sent - rejected`` and the run passes when ``answered == accepted`` (no lost,
   no failed). Triton's own counters for the same window are reported beside the client's.

Exit status 0 when nothing was lost or failed, 1 otherwise, 2 when the run could not be made.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from trtserve_client.errors import (
    RequestTimeoutError,
    ServerOverloadedError,
    ServerUnavailableError,
    translate_error,
)
from trtserve_client.retry import is_retryable

from . import triton_metrics
from .workload import LOADTEST_DIR, load_corpus

REPO_ROOT = LOADTEST_DIR.parent
CHANNELS = 8  # requests are spread over a few HTTP/2 connections, like separate clients


@dataclass
class Outcomes:
    """Every request's fate and latency (ms), by outcome."""

    answered: list[float] = field(default_factory=list)
    rejected_queue_full: list[float] = field(default_factory=list)
    rejected_queue_timeout: list[float] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)

    @property
    def sent(self) -> int:
        return (len(self.answered) + len(self.rejected_queue_full) + len(self.rejected_queue_timeout)
                + len(self.failed) + len(self.lost))

    @property
    def rejected(self) -> int:
        return len(self.rejected_queue_full) + len(self.rejected_queue_timeout)

    @property
    def accepted(self) -> int:
        return self.sent - self.rejected


def classify(error: BaseException | None) -> str:
    """The outcome name for a finished request (``error`` ``None``: success)."""
    if error is None:
        return "answered"
    typed = translate_error(error)
    if isinstance(typed, ServerOverloadedError):
        return "rejected_queue_full"
    if isinstance(typed, RequestTimeoutError):
        # The server's queue timeout comes back as UNAVAILABLE (retryable); the client's own
        # deadline as DEADLINE_EXCEEDED: the request was in the server and got no answer.
        return "rejected_queue_timeout" if is_retryable(typed) else "lost"
    if isinstance(typed, ServerUnavailableError):
        return "lost"  # connection dropped or refused: no answer
    return "failed"


def percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(np.asarray(values), q)) if values else None


class Generator:
    """Sends single texts to one ensemble over a few gRPC channels (tritonclient.grpc.aio)."""

    def __init__(self, url: str, model: str, texts: list[str], timeout_s: float) -> None:
        import tritonclient.grpc.aio as aioclient

        import trtserve_contract as contract

        self.tc = aioclient
        self.clients = [aioclient.InferenceServerClient(url) for _ in range(CHANNELS)]
        self.model, self.texts, self.timeout_s = model, texts, timeout_s
        self.text_name = contract.TEXT
        self.sent = 0

    async def one(self, outcomes: Outcomes) -> None:
        i = self.sent
        self.sent += 1
        text = self.tc.InferInput(self.text_name, [1, 1], "BYTES")
        text.set_data_from_numpy(np.array([[self.texts[i % len(self.texts)].encode()]], dtype=np.object_))
        start = time.perf_counter()
        error: BaseException | None = None
        try:
            await self.clients[i % CHANNELS].infer(self.model, [text], client_timeout=self.timeout_s)
        except Exception as e:  # noqa: BLE001 - every failure is classified below
            error = e
        ms = (time.perf_counter() - start) * 1000.0
        kind = classify(error)
        target = getattr(outcomes, kind)
        target.append(ms if kind in ("answered", "rejected_queue_full", "rejected_queue_timeout") else str(error)[:200])

    async def closed_loop(self, concurrency: int, seconds: float) -> tuple[Outcomes, float]:
        outcomes = Outcomes()
        stop = time.monotonic() + seconds

        async def worker() -> None:
            while time.monotonic() < stop:
                await self.one(outcomes)

        start = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return outcomes, time.monotonic() - start

    async def open_loop(self, rate: float, seconds: float) -> tuple[Outcomes, float, float]:
        """Evenly spaced arrivals at ``rate``/s for ``seconds``; then wait for every request."""
        outcomes = Outcomes()
        tasks: list[asyncio.Task] = []
        start = time.monotonic()
        total = int(rate * seconds)
        while len(tasks) < total:
            due = min(total, int((time.monotonic() - start) * rate) + 1)
            while len(tasks) < due:
                tasks.append(asyncio.ensure_future(self.one(outcomes)))
            await asyncio.sleep(min(0.002, 1.0 / rate))
        offered_s = time.monotonic() - start
        await asyncio.gather(*tasks)
        return outcomes, offered_s, time.monotonic() - start

    async def close(self) -> None:
        for client in self.clients:
            await client.close()


async def probe_ready(url: str, stop: asyncio.Event, interval_s: float = 0.25) -> list[float]:
    """ServerReady latencies (ms) on a separate connection while the overload runs; a failed
    probe counts as 5000 ms."""
    import tritonclient.grpc.aio as aioclient

    client = aioclient.InferenceServerClient(url)
    latencies = []
    try:
        while not stop.is_set():
            start = time.perf_counter()
            try:
                ok = await client.is_server_ready(client_timeout=5.0)
            except Exception:  # noqa: BLE001
                ok = False
            latencies.append((time.perf_counter() - start) * 1000.0 if ok else 5000.0)
            try:
                await asyncio.wait_for(stop.wait(), interval_s)
            except asyncio.TimeoutError:
                pass
    finally:
        await client.close()
    return latencies


def _ms(values: list[float], q: float) -> float | None:
    p = percentile(values, q)
    return None if p is None else round(p, 1)


def summarize(outcomes: Outcomes, offered_rate: float, offered_s: float, total_s: float) -> dict:
    return {
        "offered_rps": round(offered_rate, 1),
        "offered_seconds": round(offered_s, 2),
        "drained_seconds": round(total_s, 2),
        "sent": outcomes.sent,
        "accepted": outcomes.accepted,
        "rejected": outcomes.rejected,
        "rejected_queue_full": len(outcomes.rejected_queue_full),
        "rejected_queue_timeout": len(outcomes.rejected_queue_timeout),
        "answered": len(outcomes.answered),
        "failed": len(outcomes.failed),
        "lost": len(outcomes.lost),
        "answered_rps": round(len(outcomes.answered) / offered_s, 1) if offered_s else 0.0,
        "accepted_p50_ms": _ms(outcomes.answered, 50),
        "accepted_p99_ms": _ms(outcomes.answered, 99),
        "accepted_max_ms": _ms(outcomes.answered, 100),
        "queue_full_rejection_p99_ms": _ms(outcomes.rejected_queue_full, 99),
        "queue_timeout_rejection_p99_ms": _ms(outcomes.rejected_queue_timeout, 99),
        "failed_examples": outcomes.failed[:5],
        "lost_examples": outcomes.lost[:5],
    }


async def benchmark(args: argparse.Namespace) -> dict:
    texts = load_corpus(args.corpus or None)
    gen = Generator(args.url, args.model, texts, args.timeout)
    try:
        if args.capacity:
            capacity, cap = args.capacity, {"given_rps": args.capacity}
        else:
            print(f"overload: measuring capacity, {args.capacity_concurrency} closed-loop clients "
                  f"for {args.capacity_seconds:.0f}s ...", file=sys.stderr, flush=True)
            await gen.closed_loop(args.capacity_concurrency, min(2.0, args.capacity_seconds))  # warm-up
            measured, seconds = await gen.closed_loop(args.capacity_concurrency, args.capacity_seconds)
            capacity = len(measured.answered) / seconds
            cap = {"measured_rps": round(capacity, 1), "concurrency": args.capacity_concurrency,
                   "seconds": round(seconds, 1), "p50_ms": _ms(measured.answered, 50),
                   "p99_ms": _ms(measured.answered, 99), "rejected": measured.rejected,
                   "lost": len(measured.lost), "failed": len(measured.failed)}
        if capacity <= 0:
            raise RuntimeError("measured capacity is 0 requests/s; is the server answering?")
        rate = args.factor * capacity
        print(f"overload: offering {rate:.0f} req/s ({args.factor:g}x {capacity:.0f}) for {args.seconds:.0f}s ...",
              file=sys.stderr, flush=True)
        before = triton_metrics.scrape(args.metrics_url) if args.metrics_url else None
        stop = asyncio.Event()
        probe = asyncio.ensure_future(probe_ready(args.url, stop))
        cpu_before = time.process_time()
        outcomes, offered_s, total_s = await gen.open_loop(rate, args.seconds)
        generator_cpu_s = time.process_time() - cpu_before
        stop.set()
        ready_ms = await probe
        after = triton_metrics.scrape(args.metrics_url) if args.metrics_url else None
    finally:
        await gen.close()
    result = {"model": args.model, "capacity": cap, "factor": args.factor,
              "overload": summarize(outcomes, rate, offered_s, total_s),
              # The generator shares the machine with the server: how much CPU it took.
              "generator_cpu_cores": round(generator_cpu_s / total_s, 2) if total_s else None,
              "ready_probe": {"count": len(ready_ms), "p99_ms": _ms(ready_ms, 99), "max_ms": _ms(ready_ms, 100)}}
    if before is not None and after is not None:
        result["server"] = [row.to_dict() for row in triton_metrics.window(before, after)]
    return result


def format_result(r: dict) -> str:
    o, c = r["overload"], r["capacity"]
    cap = (f"{c['measured_rps']} req/s measured ({c['concurrency']} closed-loop clients, p50 {c['p50_ms']} ms, "
           f"p99 {c['p99_ms']} ms)" if "measured_rps" in c else f"{c['given_rps']} req/s (given)")
    lines = [
        f"model {r['model']}: capacity {cap}",
        f"offered {o['offered_rps']} req/s ({r['factor']:g}x) for {o['offered_seconds']} s; all answered or refused "
        f"after {o['drained_seconds']} s",
        "",
        f"{'sent':>7} {'accepted':>9} {'rejected':>9} {'answered':>9} {'failed':>7} {'lost':>5} {'p99 accepted ms':>16}",
        f"{o['sent']:>7} {o['accepted']:>9} {o['rejected']:>9} {o['answered']:>9} {o['failed']:>7} {o['lost']:>5} "
        f"{o['accepted_p99_ms'] if o['accepted_p99_ms'] is not None else '-':>16}",
        "",
        f"rejected: {o['rejected_queue_full']} at the door (queue full, p99 {o['queue_full_rejection_p99_ms']} ms), "
        f"{o['rejected_queue_timeout']} after their queue timeout (p99 {o['queue_timeout_rejection_p99_ms']} ms)",
        f"answered {o['answered_rps']} req/s during the overload; accepted p50 {o['accepted_p50_ms']} ms, "
        f"max {o['accepted_max_ms']} ms",
        f"server ready probe during overload: {r['ready_probe']['count']} probes, p99 {r['ready_probe']['p99_ms']} ms, "
        f"max {r['ready_probe']['max_ms']} ms",
        f"the load generator itself used {r.get('generator_cpu_cores')} CPU cores meanwhile",
    ]
    if r.get("server"):
        lines += ["", "server side (Triton metrics, overload window):",
                  triton_metrics.format_window([triton_metrics.ModelWindow(**x) for x in r["server"]]),
                  "(Triton 2.51 counts a failed ensemble request twice in its failure counter, and a request "
                  "refused at a full queue under no composing model: the client's counts above are exact.)"]
    verdict = "PASS: every accepted request was answered" if not (o["lost"] or o["failed"]) else (
        f"FAIL: {o['lost']} lost, {o['failed']} failed; e.g. {(o['lost_examples'] + o['failed_examples'])[:2]}")
    return "\n".join(lines + ["", verdict])


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="overload", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", help="gRPC host:port of a running server (default: start one on --repository)")
    p.add_argument("--metrics-url", help="Triton metrics URL (default: the started server's)")
    p.add_argument("--repository", default=str(REPO_ROOT / "model_repository" / "cpu"))
    p.add_argument("--model", default="sentiment")
    p.add_argument("--capacity", type=float, help="requests/s to take as capacity instead of measuring it")
    p.add_argument("--capacity-concurrency", type=int, default=16)
    p.add_argument("--capacity-seconds", type=float, default=15.0)
    p.add_argument("--factor", type=float, default=2.0, help="offered load as a multiple of capacity")
    p.add_argument("--seconds", type=float, default=30.0, help="duration of the overload")
    p.add_argument("--timeout", type=float, default=30.0, help="client timeout per request (s)")
    p.add_argument("--corpus", default="", help="text file, one text per line (default: shipped snippets)")
    p.add_argument("--output", default=str(REPO_ROOT / "results" / "overload.json"))
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.factor <= 0 or args.seconds <= 0 or args.timeout <= 0:
        print("overload: --factor, --seconds and --timeout must be > 0", file=sys.stderr)
        return 2
    server = None
    try:
        if not args.url:
            from trtserve_server.embedded import EmbeddedServer, Ports

            log = Path(args.output).with_name("overload_triton.log")
            log.parent.mkdir(parents=True, exist_ok=True)
            server = EmbeddedServer(Path(args.repository), Ports.free(), log_path=log)
            server.start()
            server.wait_ready(180)
            args.url = server.grpc_url
            args.metrics_url = args.metrics_url or f"http://{server.host}:{server.ports.metrics}/metrics"
        result = asyncio.run(benchmark(args))
    except Exception as e:  # noqa: BLE001 - one line for the operator, exit 2
        print(f"overload: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    finally:
        if server is not None:
            server.stop()
    result["date"] = time.strftime("%Y-%m-%d %H:%M:%S")
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    print(format_result(result))
    print(f"\noverload: wrote {args.output}")
    o = result["overload"]
    return 1 if o["lost"] or o["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
