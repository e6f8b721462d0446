"""What the host does around a served request at concurrency 1: interleaved A/B of host conditions
against one running server (issue 13's c=1 target: served p50 <= in-process + 0.8 ms on the GPU
host, <= raw ONNX Runtime + 1.0 ms on the CPU hosts).

One embedded Triton serves the repository; for each round, each condition is set up, perf_analyzer
runs at each ``--concurrency`` (default 1) against the deployment, and the condition is torn down.
Conditions:

  * ``quiet``: nothing else runs;
  * ``smi``: ``nvidia-smi`` polled every 0.25 s, as the benchmarks' load sampler does for its GPU
    busy share (perf_analyzer.Sampler): whether the sampler itself moves the c=1 time;
  * ``idlespin``: one SCHED_IDLE busy loop per core (they run only when a core has nothing else to
    run and yield at once to any woken thread: no core enters an idle state, nothing else loses
    its turn; SMT siblings still share a core's execution units);
  * ``qos``: ``/dev/cpu_dma_latency`` held at 0 (the kernel's PM QoS request that keeps every core
    out of deep idle states while the file is open: what a latency-tuned host profile sets);
  * ``pin``: the preferred instance's stub process (every thread) pinned to one core, so the
    request always wakes it where its caches are;
  * ``poll``: what a deployment's ``idle_poll_ms`` runs (trtserve_backend.idle_poll.IdlePoller:
    SCHED_IDLE pollers on every core while the server executed within ``--poll-ms`` and at most
    one execution is in flight), hosted by this script on the server's activity stamp, so one
    server measures it on and off;
  * ``pollall``: the same pollers spinning at any load (session 13's committed version);
  * ``a+b``: two of them at once (for example ``qos+pin``).

A condition that cannot be set up here (no ``/dev/cpu_dma_latency``, no nvidia-smi) is recorded as
skipped. Changes nothing that outlives the run. The default specs turn the models' own pollers on
(``idle_poll_ms``), which the ``poll`` conditions cannot A/B: ``--model-poll-ms 0`` serves a copy
of the repository with the deployment's ``idle_poll_ms`` off (N: set to N), so ``quiet`` means none.

    python -m bench.idle_ab --repository R --deployment sentiment --texts T --rounds 3 --out idle_ab.json
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "serve"), str(ROOT / "contract"), str(ROOT)]

from bench import perf_analyzer  # noqa: E402

CONDITIONS = ("quiet", "smi", "idlespin", "qos", "pin", "qos+pin", "poll", "pollall")
_SPIN = "import os; os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0)); os.sched_setaffinity(0, {%d})\nwhile True: pass"


def log(msg: str) -> None:
    print(f"[idle_ab {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def host_facts() -> dict:
    """What decides how fast an idle core wakes: virtualization, the cpuidle driver and its states."""
    facts: dict = {"cores": os.cpu_count()}
    cpuidle = Path("/sys/devices/system/cpu/cpuidle")
    for name in ("current_driver", "current_governor", "current_governor_ro"):
        with contextlib.suppress(OSError):
            facts[f"cpuidle_{name}"] = (cpuidle / name).read_text().strip()
    states = []
    for state in sorted(Path("/sys/devices/system/cpu/cpu0/cpuidle").glob("state*")):
        with contextlib.suppress(OSError):
            states.append({k: (state / k).read_text().strip() for k in ("name", "latency", "residency", "disable")})
    facts["cpu0_idle_states"] = states
    with contextlib.suppress(OSError):
        facts["scaling_governor"] = Path("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor").read_text().strip()
    with contextlib.suppress(OSError):
        facts["hypervisor"] = "hypervisor" in Path("/proc/cpuinfo").read_text().split("flags", 2)[1].split("\n")[0]
    with contextlib.suppress(OSError):
        facts["smt_siblings_cpu0"] = Path("/sys/devices/system/cpu/cpu0/topology/thread_siblings_list").read_text().strip()
    facts["cpu_dma_latency_writable"] = os.access("/dev/cpu_dma_latency", os.W_OK)
    return facts


@contextlib.contextmanager
def smi_polling():
    if not shutil.which("nvidia-smi"):
        raise RuntimeError("no nvidia-smi")
    with perf_analyzer.Sampler(gpu=True):
        yield


@contextlib.contextmanager
def idle_spinners():
    procs = [subprocess.Popen([sys.executable, "-c", _SPIN % cpu]) for cpu in sorted(os.sched_getaffinity(0))]
    try:
        time.sleep(0.2)
        yield
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait()


@contextlib.contextmanager
def cpu_latency_qos():
    with open("/dev/cpu_dma_latency", "wb", buffering=0) as f:  # the request lasts while it is open
        f.write(struct.pack("i", 0))
        yield


def hot_stub(server_pid: int, deployment: str) -> int:
    """The pid of the preferred instance's stub (group ``<model>_hot``), else of the stub of
    ``deployment`` that ran the most CPU (one instance: the only one)."""
    from trtserve_backend.parameters import hot_group
    from trtserve_server.processes import cpu_seconds, stubs_of

    mine = {pid for pid, group in perf_analyzer._process_groups(server_pid).items() if group == f"stub:{deployment}"}
    stubs = [st for st in stubs_of(server_pid) if st.pid in mine]
    if not stubs:
        raise RuntimeError(f"no stub of {deployment}")
    hot = [st.pid for st in stubs if st.instance.startswith(hot_group(deployment) + "_")]
    return hot[0] if hot else max((st.pid for st in stubs), key=lambda pid: cpu_seconds(pid) or 0.0)


@contextlib.contextmanager
def pinned(pid: int):
    """Every thread of ``pid`` on one core (the last allowed one), restored afterwards."""
    core = max(os.sched_getaffinity(0))
    saved = {}
    for tid in (int(t) for t in os.listdir(f"/proc/{pid}/task")):
        with contextlib.suppress(OSError):
            saved[tid] = os.sched_getaffinity(tid)
            os.sched_setaffinity(tid, {core})
    try:
        yield
    finally:
        for tid, cpus in saved.items():
            with contextlib.suppress(OSError):
                os.sched_setaffinity(tid, cpus)


@contextlib.contextmanager
def idle_poller(server_pid: int, window_ms: float, busy_limit: int | None):
    from trtserve_backend.idle_poll import ActivityStamp, IdlePoller

    stamp = ActivityStamp.for_server(server_pid)
    poller = IdlePoller(stamp, window_ms, busy_limit=busy_limit)
    try:
        if not poller.polling:
            raise RuntimeError("the server's own models poll already (idle_poll_ms in the repository)")
        yield
    finally:
        poller.close()
        stamp.close()


def condition(name: str, server_pid: int, deployment: str, poll_ms: float = 20):
    """The context manager of condition ``name``; ``a+b``: both at once; ``poll_ms``: the window
    of ``poll``."""
    if "+" in name:
        stack = contextlib.ExitStack()
        try:
            for part in name.split("+"):
                stack.enter_context(condition(part, server_pid, deployment, poll_ms))
        except BaseException:
            stack.close()
            raise
        return stack
    if name == "quiet":
        return contextlib.nullcontext()
    if name == "smi":
        return smi_polling()
    if name == "idlespin":
        return idle_spinners()
    if name == "qos":
        return cpu_latency_qos()
    if name == "pin":
        return pinned(hot_stub(server_pid, deployment))
    if name in ("poll", "pollall"):
        from trtserve_backend.idle_poll import BUSY_LIMIT

        return idle_poller(server_pid, poll_ms, BUSY_LIMIT if name == "poll" else None)
    raise ValueError(f"condition {name!r}; known: {CONDITIONS}")


def with_model_poll(repository: Path, deployment: str, poll_ms: int, work: Path) -> Path:
    """A copy of ``repository`` (files hard-linked) whose ``deployment`` has ``idle_poll_ms`` =
    ``poll_ms`` (0: the parameter removed, i.e. off), set in its ModelConfig protobuf."""
    sys.path.insert(0, str(ROOT / "build"))
    from trtserve_build.core.pbtxt import read_config, write_config

    copy = work / "repository"
    shutil.copytree(repository, copy, copy_function=os.link, symlinks=True)
    path = copy / deployment / "config.pbtxt"
    config = read_config(path)
    if poll_ms:
        config.parameters["idle_poll_ms"].string_value = str(poll_ms)
    elif "idle_poll_ms" in config.parameters:
        del config.parameters["idle_poll_ms"]
    write_config(config, path)  # renamed over the link: the original's file stays as it was
    return copy


def medians(rows: list[dict], conditions, concurrencies, deployment: str) -> dict[str, dict]:
    """{"<condition> c=<n>": median p50 ms, infer/s and Triton exec us over the rounds}."""
    out = {}
    for name in conditions:
        for c in concurrencies:
            mine = [r for r in rows if r["condition"] == name and r["concurrency"] == c and r.get("p50_ms")]
            if mine:
                out[f"{name} c={c}"] = {
                    "p50_ms": statistics.median(r["p50_ms"] for r in mine),
                    "infer_per_s": statistics.median(r["infer_per_s"] for r in mine),
                    "exec_us": statistics.median(r["stages"].get(deployment, {}).get("exec_us", 0.0) for r in mine),
                    "rounds": len(mine)}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repository", required=True)
    parser.add_argument("--deployment", default="sentiment")
    parser.add_argument("--texts", required=True, help="one text per line (real review snippets)")
    parser.add_argument("--conditions", default=",".join(CONDITIONS))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", default="1", help="comma-separated client counts, each condition")
    parser.add_argument("--poll-ms", type=int, default=20, help="the poll condition's window")
    parser.add_argument("--model-poll-ms", type=int, default=None,
                        help="serve a copy whose deployment's idle_poll_ms is this (0: off; default: as built)")
    parser.add_argument("--measurement-ms", type=int, default=3000)
    parser.add_argument("--log", default="", help="the Triton log (default: a temporary file)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)

    sys.path.insert(0, str(ROOT / "bench" / "gpu"))
    from pa_bench import stage_summary, statistics as triton_statistics
    from trtserve_server.embedded import EmbeddedServer, Ports

    os.environ["TRTSERVE_ACTIVITY_STAMP"] = "1"  # the models stamp when they execute (the poll condition)
    work = Path(tempfile.mkdtemp(prefix="idle-ab-"))
    texts = [t for t in Path(args.texts).read_text().splitlines() if t][:1000]
    input_data = perf_analyzer.write_input_data(texts, work / "texts.json")
    conditions = [c for c in args.conditions.split(",") if c]
    concurrencies = [int(c) for c in args.concurrency.split(",") if c]
    result: dict = {"host": host_facts(), "deployment": args.deployment, "rounds": [], "skipped": {}}
    log(f"host: {json.dumps(result['host'])}")
    repository = Path(args.repository)
    if args.model_poll_ms is not None:
        repository = with_model_poll(repository, args.deployment, args.model_poll_ms, work)
        result["model_poll_ms"] = args.model_poll_ms
    server = EmbeddedServer(repository, Ports.free(), log_path=Path(args.log or work / "triton.log"))
    with server:
        server.wait_ready(300)
        url = server.grpc_url
        perf_analyzer.run(args.deployment, url, 1, input_data, measurement_ms=1000, workdir=work)  # warm-up
        for r in range(args.rounds):
            for name in conditions:
                if name in result["skipped"]:
                    continue
                try:
                    ctx = condition(name, server.process.pid, args.deployment, args.poll_ms)
                    ctx.__enter__()
                except (OSError, RuntimeError) as e:
                    result["skipped"][name] = str(e)
                    log(f"{name}: skipped ({e})")
                    continue
                try:
                    for c in concurrencies:
                        before = triton_statistics(url)
                        started = time.perf_counter()
                        row = perf_analyzer.run(args.deployment, url, c, input_data,
                                                measurement_ms=args.measurement_ms, workdir=work)
                        row["stages"] = stage_summary(before, triton_statistics(url), time.perf_counter() - started)
                        row.update(condition=name, round=r)
                        result["rounds"].append(row)
                        stage = row["stages"].get(args.deployment, {})
                        log(f"round {r} {name:9s} c={c} p50 {row.get('p50_ms')} ms, {row.get('infer_per_s')}/s, "
                            f"queue {stage.get('queue_us')} us, exec {stage.get('exec_us')} us {row.get('error', '')}")
                finally:
                    ctx.__exit__(None, None, None)
                Path(args.out).write_text(json.dumps(result, indent=1))
    result["medians"] = medians(result["rounds"], conditions, concurrencies, args.deployment)
    Path(args.out).write_text(json.dumps(result, indent=1))
    for key, row in result["medians"].items():
        log(f"median {key}: {row}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
