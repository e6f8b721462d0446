"""bench.perf_analyzer: the protocol a run uses, and the server's busiest threads over a step (what
names a serial stage: a thread near one core busy)."""
from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from bench import perf_analyzer

CSV = ("Concurrency,Inferences/Second,Client Send,Network+Server Send/Recv,Server Queue,Server Compute Input,"
       "Server Compute Infer,Server Compute Output,Client Recv,p50 latency,p90 latency,p95 latency,p99 latency,"
       "Avg latency\n1,1234.5,10,300,20,5,400,6,7,800,900,950,1000,820\n")


def fake_perf_analyzer(tmp_path: Path) -> list[str]:
    """A stand-in command that records its arguments and writes perf_analyzer's CSV where -f says."""
    script = tmp_path / "fake_pa.py"
    script.write_text(textwrap.dedent(f"""
        import sys
        from pathlib import Path
        args = sys.argv[1:]
        Path({str(tmp_path / 'argv.txt')!r}).write_text("\\n".join(args))
        Path(args[args.index("-f") + 1]).write_text({CSV!r})
    """))
    return [sys.executable, str(script)]


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_a_run_uses_the_protocol_it_is_given_and_parses_the_csv(tmp_path, protocol):
    data = perf_analyzer.write_input_data(["a text"], tmp_path / "data.json")
    row = perf_analyzer.run("sentiment", "127.0.0.1:1", 4, data, pa=fake_perf_analyzer(tmp_path),
                            workdir=tmp_path, protocol=protocol)
    argv = (tmp_path / "argv.txt").read_text().splitlines()
    assert argv[argv.index("-i") + 1] == protocol
    assert row["protocol"] == protocol and row["infer_per_s"] == 1234.5 and row["p50_ms"] == 0.8


def test_an_unknown_protocol_is_refused(tmp_path):
    with pytest.raises(ValueError, match="grpc or http"):
        perf_analyzer.run("m", "u", 1, tmp_path / "d.json", pa=["true"], protocol="udp")


def test_busiest_threads_orders_by_busy_share_and_drops_idle_ones():
    before = {1: ("tritonserver/a", 1.0), 2: ("tritonserver/b", 5.0), 3: ("stub:x/c", 0.0)}
    after = {1: ("tritonserver/a", 1.001), 2: ("tritonserver/b", 6.8), 3: ("stub:x/c", 0.9),
             4: ("stub:x/new", 0.4)}  # 4: started during the step
    rows = perf_analyzer.busiest_threads(before, after, wall_s=2.0)
    assert [(r["thread"], r["busy"]) for r in rows] == [("tritonserver/b", 0.9), ("stub:x/c", 0.45),
                                                        ("stub:x/new", 0.2)]
    assert len(perf_analyzer.busiest_threads(before, after, 2.0, top=1)) == 1


def test_the_sampler_names_a_busy_thread_of_the_server(tmp_path):
    """A process that looks like tritonserver (its argv[0]) with one named thread spinning: the
    sampler, rooted at it, reports that thread as the busiest, near one core; the idle main thread
    is not reported."""
    server = tmp_path / "tritonserver"
    server.symlink_to(sys.executable)
    code = textwrap.dedent("""
        import ctypes, threading, time
        def spin():
            ctypes.CDLL(None).prctl(15, b"spinner", 0, 0, 0)  # PR_SET_NAME: this thread's name
            while True:
                pass
        threading.Thread(target=spin, daemon=True).start()
        print("up", flush=True)
        time.sleep(60)
    """)
    proc = subprocess.Popen([str(server), "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "up"
        with perf_analyzer.Sampler(gpu=False, root=proc.pid) as sampler:
            time.sleep(1.0)
        rows = sampler.result["busiest_threads"]
        assert rows[0]["thread"] == "tritonserver/spinner", rows
        assert rows[0]["busy"] > 0.3, rows  # one core, shared with whatever else this host runs
        assert all(r["thread"] != "tritonserver/tritonserver" or r["busy"] < 0.1 for r in rows)
        assert sampler.result["cores_busy"]["tritonserver"] > 0.3
    finally:
        proc.kill()
        proc.wait()
