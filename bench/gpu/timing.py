"""Timing helpers shared by the GPU benchmark scripts (run on the GPU machine)."""
from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from typing import Callable

import numpy as np


def summary_ms(samples_s: list[float]) -> dict[str, float]:
    ms = np.asarray(samples_s) * 1000.0
    return {"p50_ms": float(np.percentile(ms, 50)), "p95_ms": float(np.percentile(ms, 95)),
            "mean_ms": float(ms.mean()), "n": int(len(ms))}


def time_gpu(fn: Callable[[], object], rows: int, *, budget_s: float = 0.25, min_iters: int = 10,
             max_iters: int = 300, warmup: int = 3) -> dict[str, float]:
    """Latency (each call synchronized, median) and throughput (calls back to back) of ``fn``.

    ``rows`` sequences per call; the iteration count is sized from a warm call so each phase
    takes about ``budget_s``.
    """
    import torch

    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    once = time.perf_counter() - start
    iters = int(min(max_iters, max(min_iters, budget_s / max(once, 1e-6))))
    samples = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        samples.append(time.perf_counter() - start)
    begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    begin.record()
    for _ in range(iters):
        fn()
    end.record()
    end.synchronize()
    per_call_ms = begin.elapsed_time(end) / iters
    out = summary_ms(samples)
    out.update({"throughput_per_s": rows * 1000.0 / per_call_ms, "back_to_back_ms": per_call_ms,
                "iters": iters})
    return out


def gpu_info() -> dict:
    """GPU model, driver, CUDA and library versions, date (UTC)."""
    info: dict = {"date_utc": time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime()), "host": platform.node(),
                  "cpus": os.cpu_count(), "python": platform.python_version()}
    try:
        row = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit",
             "--format=csv,noheader"], capture_output=True, text=True, timeout=30).stdout.strip().splitlines()[0]
        name, driver, memory, sm_clock, power = [x.strip() for x in row.split(",")]
        info.update({"gpu": name, "driver": driver, "gpu_memory": memory, "max_sm_clock": sm_clock,
                     "power_limit": power})
    except Exception as e:  # noqa: BLE001 - recorded, not fatal
        info["nvidia_smi_error"] = str(e)
    try:
        import torch

        info.update({"torch": torch.__version__, "cuda_runtime": torch.version.cuda,
                     "torch_device": torch.cuda.get_device_name() if torch.cuda.is_available() else None})
    except ImportError:
        pass
    return info


def exit_on_sigterm() -> None:
    """Turn `timeout`'s SIGTERM into SystemExit, so finally blocks write partial results and stop servers."""
    import signal
    import sys

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


def write_json(path: str, data: dict) -> None:
    with open(path, "w") as f:
        json.dump(data, f, indent=2, default=str)
        f.write("\n")
