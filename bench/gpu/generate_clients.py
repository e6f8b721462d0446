"""Streaming ``generate`` clients over gRPC, spread over processes (issue 11's served numbers).

One Python process reading 32-64 token streams spends its GIL on protobuf parsing and result
objects and becomes the bottleneck it is meant to measure; real clients are separate programs.
``stream_clients`` starts ``procs`` processes (spawned), each running its share of the streams as
threads with one ``TrtServeClient`` each; they start together (a barrier) and every thread keeps
one stream open until ``seconds`` have passed (the stream it started before then completes).

Per stream: time to first piece, gaps between pieces (inter-token latency: one piece per token
unless the server joined pieces of a lagging stream), generated tokens (the final ``TOKENS``).
"""
from __future__ import annotations

import multiprocessing
import threading
import time


def pct(values, q):
    if not values:
        return None
    values = sorted(values)
    return round(values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))], 3)


def summary(ttft_ms, gaps_ms, tokens, seconds):
    return {"ttft_ms_p50": pct(ttft_ms, 50), "ttft_ms_p95": pct(ttft_ms, 95),
            "inter_token_ms_p50": pct(gaps_ms, 50), "inter_token_ms_p95": pct(gaps_ms, 95),
            "tokens": tokens, "seconds": round(seconds, 3), "tokens_per_s": round(tokens / seconds, 1)}


def _process(url, model, prompts, first, step, threads, new_tokens, seconds, barrier, results):
    from trtserve_client import TrtServeClient

    ttft, gaps, pieces, lock = [], [], [0], threading.Lock()
    counts = {"tokens": 0, "streams": 0, "errors": 0}
    clients = [TrtServeClient(url, timeout_s=120) for _ in range(threads)]
    barrier.wait()
    stop_at = time.monotonic() + seconds

    def worker(i, client):
        n = first + i * step
        while time.monotonic() < stop_at:
            start = time.perf_counter()
            times = []
            try:
                stream = client.generate(prompts[n % len(prompts)], max_new_tokens=new_tokens, model=model)
                for _ in stream:
                    times.append(time.perf_counter())
            except Exception as e:  # noqa: BLE001 - counted
                with lock:
                    counts["errors"] += 1
                print(f"stream error: {e}", flush=True)
                continue
            with lock:
                if times:
                    ttft.append((times[0] - start) * 1000)
                    gaps.extend((b - a) * 1000 for a, b in zip(times, times[1:]))
                counts["tokens"] += stream.tokens or 0
                counts["streams"] += 1
                pieces[0] += len(times)
            n += step * threads

    pool = [threading.Thread(target=worker, args=(i, c)) for i, c in enumerate(clients)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    for c in clients:
        c.close()
    results.put({"ttft": ttft, "gaps": gaps, "pieces": pieces[0], "end": time.time(), **counts})


def stream_clients(url: str, model: str, prompts, streams: int, new_tokens: int, seconds: float,
                   procs: int = 1) -> dict:
    """``streams`` concurrent streams from ``procs`` processes; the summary of all of them."""
    procs = max(1, min(procs, streams))
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(procs + 1), ctx.Queue()
    workers = []
    for p in range(procs):
        threads = streams // procs + (1 if p < streams % procs else 0)
        workers.append(ctx.Process(target=_process, args=(url, model, list(prompts), p, procs, threads, new_tokens,
                                                          seconds, barrier, results), daemon=True))
    for w in workers:
        w.start()
    barrier.wait(timeout=300)
    started = time.time()
    parts = [results.get(timeout=seconds + 300) for _ in workers]
    for w in workers:
        w.join(30)
    ttft = [x for part in parts for x in part["ttft"]]
    gaps = [x for part in parts for x in part["gaps"]]
    out = summary(ttft, gaps, sum(p["tokens"] for p in parts), max(p["end"] for p in parts) - started)
    out.update(streams_done=sum(p["streams"] for p in parts), errors=sum(p["errors"] for p in parts),
               pieces_per_token=round(sum(p["pieces"] for p in parts) / max(1, sum(p["tokens"] for p in parts)), 3),
               client_procs=procs)
    return out
