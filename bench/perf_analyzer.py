"""perf_analyzer (Triton's C++ load generator) as the outside client of a benchmark, plus what a
step needs to name its bottleneck: CPU seconds per server process and the GPU's busy share.

The command comes from ``$PERF_ANALYZER`` (for example a ``docker run ... perf_analyzer`` of a
Debian trixie container on a host whose glibc is too old for the wheel's binary), else
``perf_analyzer`` on PATH (the ``perf-analyzer`` wheel). Each concurrency is one perf_analyzer
run (closed loop, async gRPC, one text per request from real review snippets); its CSV row is
parsed into milliseconds and requests per second.
"""
from __future__ import annotations

import csv
import json
import os
import resource
import shlex
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Sequence


def command() -> list[str] | None:
    """The perf_analyzer command line prefix, or None when there is none on this machine."""
    if os.environ.get("PERF_ANALYZER"):
        return shlex.split(os.environ["PERF_ANALYZER"])
    found = shutil.which("perf_analyzer")
    return [found] if found else None


def write_input_data(texts: Sequence[str], path: Path, input_name: str = "TEXT") -> Path:
    """perf_analyzer --input-data JSON: one single-text request per text (shape [1] without the batch axis)."""
    path = Path(path)
    path.write_text(json.dumps({"data": [{input_name: {"content": [t], "shape": [1]}} for t in texts]}))
    return path


def _ms(row: dict, key: str) -> float | None:
    value = row.get(key)
    return float(value) / 1000.0 if value not in (None, "") else None


def run(model: str, url: str, concurrency: int, input_data: Path, *, measurement_ms: int = 3000,
        stability_pct: int = 100, timeout_s: float = 120.0, pa: list[str] | None = None,
        workdir: Path | None = None, sync: bool = False, protocol: str = "grpc") -> dict:
    """One perf_analyzer run at ``concurrency``; returns throughput and latency (ms) or an error.

    ``protocol``: "grpc" (the default) or "http" (``url`` is then the server's HTTP address): the
    same requests through Triton's other frontend.

    ``sync``: perf_analyzer's own default, one blocking call per request on each of
    ``concurrency`` threads, instead of ``--async`` (a completion thread hands responses back);
    at concurrency 1 both keep exactly one request in flight (bench/c1_probe.py compares them).

    perf_analyzer measures windows of ``measurement_ms`` until three in a row agree within
    ``stability_pct`` (100: the first three count, on a shared noisy host a tighter bound may
    never be met) and reports their average.
    """
    pa = pa or command()
    if not pa:
        return {"concurrency": concurrency, "error": "no perf_analyzer (set PERF_ANALYZER or install perf-analyzer)"}
    workdir = Path(workdir or tempfile.mkdtemp(prefix="pa-"))
    if protocol not in ("grpc", "http"):
        raise ValueError(f"protocol must be grpc or http, not {protocol!r}")
    out_csv = workdir / f"{model}_c{concurrency}{'_sync' if sync else ''}_{protocol}.csv"
    cmd = [*pa, "-m", model, "-i", protocol, "-u", url, "--input-data", str(input_data),
           "--concurrency-range", f"{concurrency}:{concurrency}", *(() if sync else ("--async",)), "--max-threads", "16",
           "--measurement-interval", str(measurement_ms), "--stability-percentage", str(stability_pct),
           "--max-trials", "6",
           "-f", str(out_csv)]
    started = time.perf_counter()
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"concurrency": concurrency, "error": f"perf_analyzer timed out after {timeout_s:.0f}s"}
    if proc.returncode != 0 or not out_csv.exists():
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-4:]
        return {"concurrency": concurrency, "error": f"perf_analyzer exit {proc.returncode}: {' | '.join(tail)}"}
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    wall = time.perf_counter() - started
    with out_csv.open() as f:
        row = next(csv.DictReader(f))
    return {
        "concurrency": concurrency, "mode": "sync" if sync else "async", "protocol": protocol,
        "infer_per_s": float(row["Inferences/Second"]),
        "p50_ms": _ms(row, "p50 latency"), "p90_ms": _ms(row, "p90 latency"),
        "p95_ms": _ms(row, "p95 latency"), "p99_ms": _ms(row, "p99 latency"),
        "avg_ms": _ms(row, "Avg latency"),
        # perf_analyzer's split of the average (server side from Triton's statistics of the model)
        "client_send_ms": _ms(row, "Client Send"), "network_server_ms": _ms(row, "Network+Server Send/Recv"),
        "server_queue_ms": _ms(row, "Server Queue"), "server_compute_input_ms": _ms(row, "Server Compute Input"),
        "server_compute_infer_ms": _ms(row, "Server Compute Infer"),
        "server_compute_output_ms": _ms(row, "Server Compute Output"), "client_recv_ms": _ms(row, "Client Recv"),
        "wall_s": round(wall, 1),
        # the client's own CPU (it shares the host): cores busy over its whole run
        "client_cores_busy": round((used.ru_utime + used.ru_stime - children.ru_utime - children.ru_stime) / wall, 2),
    }


# ---- where the time goes: CPU per process, GPU busy ----------------------------------------------

def _parents() -> dict[int, int]:
    out = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                out[int(entry)] = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    return out


def _process_groups(root: int | None = None) -> dict[int, str]:
    """pid -> group: tritonserver, each Python-backend stub by its model, perf_analyzer. With
    ``root``, only the server processes below that pid (other servers may share the host)."""
    parents = _parents() if root else {}

    def below_root(pid: int) -> bool:
        while pid > 1:
            if pid == root:
                return True
            pid = parents.get(pid, 0)
        return False

    groups = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        exe = os.path.basename(argv[0].decode(errors="replace")) if argv and argv[0] else ""
        if exe in ("tritonserver", "triton_python_backend_stub") and root and not below_root(int(entry)):
            continue
        if exe == "tritonserver":
            groups[int(entry)] = "tritonserver"
        elif exe == "triton_python_backend_stub":
            # argv[1] is the model's <repository>/<model>/<version>/model.py
            model = Path(argv[1].decode(errors="replace")).parents[1].name if len(argv) > 1 else "?"
            groups[int(entry)] = f"stub:{model}"
        elif exe == "perf_analyzer":
            groups[int(entry)] = "perf_analyzer"
    return groups


def cpu_seconds(root: int | None = None, groups: dict[int, str] | None = None) -> dict[str, float]:
    """CPU seconds (user + system) so far, summed per process group (``groups``: a
    :func:`_process_groups` reading already taken, else one is taken)."""
    from trtserve_server.processes import cpu_seconds as process_seconds

    out: dict[str, float] = {}
    for pid, group in (_process_groups(root) if groups is None else groups).items():
        seconds = process_seconds(pid)
        if seconds is not None:  # None: gone since the scan
            out[group] = out.get(group, 0.0) + seconds
    return out


def thread_seconds(root: int | None = None, groups: dict[int, str] | None = None) -> dict[int, tuple[str, float]]:
    """CPU seconds (user + system) so far of every thread of the server's processes (those
    :func:`_process_groups` finds, or ``groups``): tid -> ("group/thread name", seconds). A thread
    near one core busy over a step is a serial stage that more instances or cores cannot widen."""
    from trtserve_server.processes import cpu_seconds as process_seconds

    out: dict[int, tuple[str, float]] = {}
    for pid, group in (_process_groups(root) if groups is None else groups).items():
        if group == "perf_analyzer":
            continue
        tasks = Path(f"/proc/{pid}/task")
        try:
            tids = os.listdir(tasks)
        except OSError:
            continue
        for tid in tids:
            try:
                name = (tasks / tid / "comm").read_text().strip()
            except OSError:
                continue
            seconds = process_seconds(int(tid), tasks)  # a thread's stat, read alike
            if seconds is not None:
                out[int(tid)] = (f"{group}/{name}", seconds)
    return out


def busiest_threads(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]],
                    wall_s: float, top: int = 10) -> list[dict]:
    """The ``top`` threads by cores busy between two :func:`thread_seconds` readings (1.0 = one
    core all the time), busiest first; threads under 1% are left out."""
    rows = [{"thread": name, "tid": tid, "busy": round((seconds - before.get(tid, (name, 0.0))[1]) / wall_s, 3)}
            for tid, (name, seconds) in after.items()]
    rows.sort(key=lambda r: -r["busy"])
    return [r for r in rows[:top] if r["busy"] >= 0.01]


class Sampler:
    """CPU seconds per process group and the GPU's utilization over a step (``with Sampler() as s``)."""

    def __init__(self, gpu: bool = True, root: int | None = None):
        """``root``: the server's pid (its process tree is measured; perf_analyzer always)."""
        self.gpu = gpu and shutil.which("nvidia-smi") is not None
        self.root = root
        self.gpu_samples: list[float] = []
        self._stop = threading.Event()

    def __enter__(self) -> "Sampler":
        (self._cpu0, self._threads0), self._t0 = self._reading(), time.perf_counter()
        if self.gpu:
            self._thread = threading.Thread(target=self._poll_gpu, daemon=True)
            self._thread.start()
        return self

    def _reading(self) -> tuple[dict[str, float], dict[int, tuple[str, float]]]:
        """CPU seconds per process group and, with a root, per server thread, from one scan of /proc."""
        groups = _process_groups(self.root)
        return cpu_seconds(groups=groups), (thread_seconds(groups=groups) if self.root else {})

    def _poll_gpu(self) -> None:
        while not self._stop.is_set():
            try:
                out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
                                     capture_output=True, text=True, timeout=5).stdout.split()
                self.gpu_samples.append(float(out[0]))
            except Exception:  # noqa: BLE001 - a missing sample, not a failed step
                pass
            self._stop.wait(0.25)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        wall = time.perf_counter() - self._t0
        after, threads = self._reading()
        self.result = {
            "wall_s": round(wall, 2),
            # cores busy on average over the step, per process group (1.0 = one core all the time)
            "cores_busy": {k: round((after.get(k, 0.0) - self._cpu0.get(k, 0.0)) / wall, 2)
                           for k in sorted(after) if after.get(k, 0.0) - self._cpu0.get(k, 0.0) > 0.01},
            "host_cores": os.cpu_count(),
        }
        if self.root:  # the server's busiest threads (tritonserver's frontends and instances, the stubs)
            self.result["busiest_threads"] = busiest_threads(self._threads0, threads, wall)
        if self.gpu_samples:
            self.result["gpu_util_mean_pct"] = round(sum(self.gpu_samples) / len(self.gpu_samples), 1)
