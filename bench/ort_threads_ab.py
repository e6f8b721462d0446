"""A/B of the cpu one model's ONNX Runtime threading on this host, side by side in one run.

Each variant is the `sentiment` cpu repository generated from deployments/sentiment.toml with
``[engine.cpu]`` instance_count / intra_op_threads / thread_spinning (and, where given,
hot_intra_op_threads / hot_thread_spinning / solo_intra_op_threads: the preferred
``sentiment_hot`` instance's) set (the
build's own stages, into model_repository/cpu_ab_<name>); bench/ab_repositories.py then serves
them all at once and alternates between them in rounds, by perf_analyzer when there is one
($PERF_ANALYZER or on PATH), with the do-nothing floor, each one model's ``Pipeline.run``
in-process and raw ONNX Runtime measured in the same rounds. Default variants on C cores, I =
the "auto" instance count:

    split  I instances x C/I threads, spinning, the hot instance too, no solo session ("auto"
           before the hot instance had threads of its own: 2 x 8 on 16 cores, 2 x 1 on 2)
    auto   every key "auto" (core.instances): today's default, where the hot instance (the one
           a lone request runs on) runs on every core, spinning, while no other is busy (solo)
    one    1 instance  x C threads, spinning

A variant is name:instances:threads:spinning[:hot_threads[:hot_spinning[:solo_threads]]]; the
hot keys left out stay "auto" (core.instances); solo_threads 0: no solo session.

    python -m bench.ort_threads_ab [--variants hot:2:1:true:2:true,...] [--rounds 3] [--output FILE]
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
    threads = max(1, cores // n)
    return f"split:{n}:{threads}:true:{threads}:true:0,auto:auto:auto:auto,one:1:{cores}:true"


#: ``[engine.cpu]`` keys a variant sets, in the order its fields name them (after its name)
VARIANT_KEYS = ("instance_count", "intra_op_threads", "thread_spinning", "hot_intra_op_threads",
                "hot_thread_spinning", "solo_intra_op_threads")
VARIANT_FORMAT = "name:instances:threads:spinning[:hot_threads[:hot_spinning[:solo_threads]]]"


def parse_variant(text: str) -> tuple[str, dict[str, str]]:
    """A variant (``VARIANT_FORMAT``) -> (name, {key: value})."""
    name, *values = text.split(":")
    if not 3 <= len(values) <= len(VARIANT_KEYS):
        raise ValueError(f"variant {text!r}: expected {VARIANT_FORMAT}")
    return name, dict(zip(VARIANT_KEYS, values))


def _toml_value(value: str) -> str:
    """A variant field as TOML: integers and true/false as they are, anything else ("auto") quoted."""
    return value if value.isdigit() or value in ("true", "false") else f'"{value}"'


def variant_spec(text: str, keys: dict[str, str]) -> str:
    """deployments/sentiment.toml's text with these keys of ``[engine.cpu]`` (VARIANT_KEYS)
    replaced; the threading keys not given are left out (their defaults)."""
    head, section, rest = re.split(r"(?m)^(\[engine\.cpu\]\n)", text, maxsplit=1)
    body, _, tail = rest.partition("\n[")
    body = "\n".join(line for line in body.splitlines()
                     if not re.match(rf"\s*({'|'.join(VARIANT_KEYS)})\s*=", line))
    lines = "".join(f"{key} = {_toml_value(value)}\n" for key, value in keys.items())
    return head + section + lines + body + ("\n[" + tail if tail else "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", help=VARIANT_FORMAT + ",... "
                                           "(default: split, auto, one)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=100, help="Python-client c=1 requests per round")
    parser.add_argument("--throughput-seconds", type=float, default=3.0,
                        help="8 clients per variant per round (perf_analyzer: three windows of a third)")
    parser.add_argument("--pa-ms", type=int, default=1000, help="perf_analyzer c=1 window (three per value)")
    parser.add_argument("--output", type=Path, default=REPO_ROOT / "results" / "ort_threads_ab.json")
    args = parser.parse_args(argv)

    from bench import ab_repositories

    cores = os.cpu_count() or 1
    variants = [parse_variant(v) for v in (args.variants or default_variants(cores)).split(",")]
    print(f"{cores} cores; variants {variants}", file=sys.stderr)
    text, work, repos = SPEC.read_text(), Path(tempfile.mkdtemp(prefix="ort-ab-")), []
    for name, keys in variants:
        toml = work / f"sentiment_{name}.toml"
        toml.write_text(variant_spec(text, keys))
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
    result["variants"] = {repo: keys for repo, (_, keys) in zip(repos, variants)}
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    return rc


if __name__ == "__main__":
    sys.exit(main())
