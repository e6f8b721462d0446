"""A/B of the cpu one model's ONNX Runtime threading on this host, side by side in one run.

Each variant is the `sentiment` cpu repository generated from deployments/sentiment.toml with
``[engine.cpu]`` instance_count / intra_op_threads / thread_spinning set (the build's own
stages, into model_repository/cpu_ab_<name>); bench/ab_repositories.py then serves them all at
once and alternates between them in rounds, by perf_analyzer when there is one ($PERF_ANALYZER or
on PATH), with the do-nothing floor, each one model's ``Pipeline.run`` in-process and raw ONNX
Runtime measured in the same rounds. Default variants on C cores, I = the "auto" instance count:

    split  I instances x C/I threads, spinning   ("auto": 2 x 8 on 16 cores, 2 x 1 on 2)
    all    I instances x C threads, not spinning (a c=1 request uses every core; concurrent
           runs sleep instead of spinning against each other)
    one    1 instance  x C threads, spinning

    python -m bench.ort_threads_ab [--variants all:2:16:false,...] [--rounds 3] [--output FILE]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
SPEC = REPO_ROOT / "deployments" / "sentiment.toml"


def default_variants(cores: int) -> str:
    from trtserve_build.core.instances import host_sized
    from trtserve_build.core.spec import load_spec

    spec = load_spec(SPEC)
    n = host_sized(spec, "cpu", "instance_count", cores)
    return f"split:{n}:{max(1, cores // n)}:true,all:{n}:{cores}:false,one:1:{cores}:true"


def variant_spec(text: str, instances: str, threads: str, spinning: str) -> str:
    """deployments/sentiment.toml's text with these three keys of ``[engine.cpu]`` replaced."""
    head, section, rest = re.split(r"(?m)^(\[engine\.cpu\]\n)", text, maxsplit=1)
    body, _, tail = rest.partition("\n[")
    body = "\n".join(line for line in body.splitlines()
                     if not re.match(r"\s*(instance_count|intra_op_threads|thread_spinning)\s*=", line))
    keys = f"instance_count = {instances}\nintra_op_threads = {threads}\nthread_spinning = {spinning}\n"
    return head + section + keys + body + ("\n[" + tail if tail else "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", help="name:instances:threads:spinning,... (default: split, all, one)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=100, help="Python-client c=1 requests per round")
    parser.add_argument("--throughput-seconds", type=float, default=3.0,
                        help="8 clients per variant per round (perf_analyzer: three windows of a third)")
    parser.add_argument("--pa-ms", type=int, default=1000, help="perf_analyzer c=1 window (three per value)")
    parser.add_argument("--output", type=Path, default=REPO_ROOT / "results" / "ort_threads_ab.json")
    args = parser.parse_args(argv)

    from bench import ab_repositories

    cores = os.cpu_count() or 1
    variants = [v.split(":") for v in (args.variants or default_variants(cores)).split(",")]
    print(f"{cores} cores; variants name:instances:threads:spinning {variants}", file=sys.stderr)
    text, work, repos = SPEC.read_text(), Path(tempfile.mkdtemp(prefix="ort-ab-")), []
    for name, instances, threads, spinning in variants:
        toml = work / f"sentiment_{name}.toml"
        toml.write_text(variant_spec(text, instances, threads, spinning))
        repo = REPO_ROOT / "model_repository" / f"cpu_ab_{name}"
        subprocess.run([sys.executable, "-m", "trtserve_build.cli", "engines", str(toml), "--variant", "cpu",
                        "--output", str(repo)], check=True, cwd=REPO_ROOT)
        repos.append(str(repo))
    from bench import perf_analyzer

    rc = ab_repositories.main([*repos, "--rounds", str(args.rounds), "--requests", str(args.requests),
                               "--throughput-seconds", str(args.throughput_seconds), "--pa-ms", str(args.pa_ms),
                               "--floor", "--in-process", "--raw-onnxruntime", "--output", str(args.output),
                               *(["--perf-analyzer"] if perf_analyzer.command() else [])])
    result = json.loads(args.output.read_text())
    result["variants"] = {repo: dict(zip(("instance_count", "intra_op_threads", "thread_spinning"), v[1:]))
                          for repo, v in zip(repos, variants)}
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    return rc


if __name__ == "__main__":
    sys.exit(main())
