"""`make bench-matrix`: timing, peak memory, foreign CPU load and the CSV the points go to."""
from __future__ import annotations

import csv
import datetime as _dt
import re
import time
from pathlib import Path

import numpy as np
from trtserve_build.core.lazy import lazy_import

torch = lazy_import("torch")

FIELDS = ("model", "executor", "precision", "batch", "seq", "status", "iterations", "median_ms", "p95_ms",
          "sequences_per_s", "tokens_per_s", "peak_mem_mib", "model_mem_mib", "device", "inputs", "host", "utc", "note")


def _status_mib(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


class PeakMemory:
    """Peak memory during one measurement, minus ``base_mib``: what was resident in this
    series' fresh process before its model was loaded (the runtime already imported). So the
    number is model + activations + workspace, comparable across series."""

    def __init__(self, device: str, base_mib: float) -> None:
        self.device = device
        self.base = base_mib

    def __enter__(self):
        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        else:
            try:
                Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
            except OSError:
                pass
        return self

    def __exit__(self, *exc):
        if self.device == "cuda":
            self.peak_mib = torch.cuda.max_memory_allocated() / 2**20 - self.base
        else:
            self.peak_mib = _status_mib("VmHWM") - self.base
        return False


def resident_mib(device: str) -> float:
    if device == "cuda":
        return torch.cuda.memory_allocated() / 2**20
    return _status_mib("VmRSS")


# ---------------------------------------------------------------------------------------
# Measuring
# ---------------------------------------------------------------------------------------
def measure(run, feeds, *, max_run_s: float, target_s: float, min_iters: int = 3, max_iters: int = 30) -> dict:
    """Warm up, then time ``run(feeds)`` until ``target_s`` or ``max_iters`` (at least ``min_iters``)."""
    start = time.perf_counter()
    run(feeds)
    first = time.perf_counter() - start
    if first > max_run_s or first < 1.0:
        # a first run at a new shape pays one-off costs (kernel selection, allocations):
        # the cap is judged on the second one
        start = time.perf_counter()
        run(feeds)
        first = time.perf_counter() - start
    if first > max_run_s:
        return {"status": "skipped", "note": f"a warm run took {first:.1f} s > --max-run-s {max_run_s}", "first_s": first}
    samples: list[float] = []
    while len(samples) < max_iters and (len(samples) < min_iters or sum(samples) < target_s):
        t = time.perf_counter()
        run(feeds)
        samples.append(time.perf_counter() - t)
    ms = np.asarray(samples) * 1000
    return {"status": "ok", "iterations": len(samples), "median_ms": float(np.median(ms)),
            "p95_ms": float(np.percentile(ms, 95)), "first_s": first}


class ForeignCpu:
    """Share of the host's CPU time used by *other* processes during a measurement (from
    /proc/stat minus this process's own ticks): the benchmark shares its host, and a point
    measured while something else ran is retried."""

    def __enter__(self):
        self.start = self._ticks()
        return self

    def __exit__(self, *exc):
        (busy0, total0, own0), (busy1, total1, own1) = self.start, self._ticks()
        total = max(total1 - total0, 1)
        self.share = max(0.0, ((busy1 - busy0) - (own1 - own0)) / total)
        return False

    @staticmethod
    def _ticks() -> tuple[int, int, int]:
        try:
            cpu = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
            busy = sum(cpu) - cpu[3] - (cpu[4] if len(cpu) > 4 else 0)  # minus idle and iowait
            stat = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
            own = int(stat[11]) + int(stat[12])  # utime + stime, all threads
            return busy, sum(cpu), own
        except (OSError, ValueError, IndexError):
            return 0, 1, 0


#: A point measured while other processes used more than this share of the host's CPU is
#: measured again (after a pause), up to CONTENTION_RETRIES times; the share is recorded.
MAX_FOREIGN_CPU = 0.15
CONTENTION_RETRIES = 4


def read_rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def point_key(row) -> tuple:
    return (row["model"], row["executor"], row["precision"], int(row["batch"]), int(row["seq"]))


class CsvSink:
    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists() or path.stat().st_size == 0:
            with open(path, "w", newline="") as f:
                csv.DictWriter(f, FIELDS).writeheader()

    def append(self, row: dict) -> None:
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, FIELDS).writerow({k: row.get(k, "") for k in FIELDS})



def drop_contended(csv_path: Path) -> int:
    """Remove the rows measured under foreign CPU load (a rerun measures them again)."""
    rows = read_rows(csv_path)
    keep = [r for r in rows if not ((m := re.search(r"other processes (\d+)% CPU", r.get("note", "")))
                                    and int(m.group(1)) / 100 > MAX_FOREIGN_CPU)]
    if len(keep) != len(rows):
        csv_path.unlink()
        sink = CsvSink(csv_path)
        for r in keep:
            sink.append(r)
    print(f"bench-matrix: {len(rows) - len(keep)} contended point(s) to measure again")
    return len(rows) - len(keep)


def safe_resident(device: str) -> float | None:
    try:
        return resident_mib(device)
    except Exception:  # noqa: BLE001 - e.g. no CUDA: the series will be skipped anyway
        return None


def make_row(model, executor, precision, b, s, status, note, device, inputs, host) -> dict:
    return {"model": model, "executor": executor, "precision": precision, "batch": b, "seq": s,
            "status": status, "note": note, "device": device, "inputs": inputs, "host": host,
            "utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}

