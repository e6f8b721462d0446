"""What a response's output tensors cost: do-nothing one-model floors (bench/ensemble_floor.py) of
one deployment answering all of its outputs against copies that answer one each, and another
deployment's floor beside them, on one embedded Triton, read by perf_analyzer.

Why: the `sentiment` contract answers three tensors per request (LABEL, SCORE, PROBABILITIES) and
`embed` one (EMBEDDING); on the GPU machine `sentiment` served 18-27% fewer texts/s than `embed`
from 128 clients up with the same batches (bench/gpu/NOTES.md, session 15). The floors do no work,
so what differs between them is the responses alone. Rounds alternate the models' order.

    python -m bench.floor_outputs --rounds 4 --out floor_outputs.json   # after make engines
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

from bench import perf_analyzer
from bench.ensemble_floor import write_floor_repository
from trtserve_build.core.pbtxt import read_config, write_config

ROOT = Path(__file__).resolve().parents[1]


def one_output_copies(repository: Path, deployment: str) -> list[str]:
    """Beside ``deployment`` in ``repository``, one copy per output answering only that output
    (``<deployment>_only_<output>``: its ModelConfig with the other outputs removed); their names."""
    source = read_config(repository / deployment / "config.pbtxt")
    names = []
    for output in source.output:
        name = f"{deployment}_only_{output.name.lower()}"
        shutil.copytree(repository / deployment, repository / name)
        config = type(source)()
        config.CopyFrom(source)
        config.name = name
        del config.output[:]
        config.output.add().CopyFrom(output)
        write_config(config, repository / name / "config.pbtxt")
        names.append(name)
    return names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repository", default=str(ROOT / "model_repository" / "cpu"), help="a generated one-model repository")
    parser.add_argument("--deployment", default="sentiment")
    parser.add_argument("--beside", default="embed", help="another deployment's floor, measured alike")
    parser.add_argument("--texts", default=str(ROOT / "loadtest" / "data" / "review_snippets.txt"))
    parser.add_argument("--concurrency", default="1,16")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--measurement-ms", type=int, default=2000)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)

    from trtserve_server.embedded import EmbeddedServer, Ports

    work = Path(tempfile.mkdtemp(prefix="floor-outputs-"))
    floors = write_floor_repository(Path(args.repository), work / "repository", (args.deployment, args.beside))
    models = [args.deployment, *one_output_copies(floors, args.deployment), args.beside]
    texts = [t for t in Path(args.texts).read_text().splitlines() if t][:500]
    data = perf_analyzer.write_input_data(texts, work / "texts.json")
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    rows: list[dict] = []
    with EmbeddedServer(floors, Ports.free(), log_path=work / "triton.log") as server:
        server.wait_ready(300)
        for model in models:  # warm-up
            perf_analyzer.run(model, server.grpc_url, 1, data, measurement_ms=1000, workdir=work)
        for r in range(args.rounds):
            for model in models if r % 2 == 0 else models[::-1]:
                for c in concurrencies:
                    row = perf_analyzer.run(model, server.grpc_url, c, data, measurement_ms=args.measurement_ms, workdir=work)
                    rows.append({"round": r, "model": model, "concurrency": c, "p50_ms": row.get("p50_ms"),
                                 "infer_per_s": row.get("infer_per_s"), "error": row.get("error")})
                    print(json.dumps(rows[-1]), flush=True)
    medians = {}
    for model in models:
        for c in concurrencies:
            mine = [x for x in rows if x["model"] == model and x["concurrency"] == c and x["p50_ms"]]
            if mine:
                medians[f"{model} c={c}"] = {"p50_ms": statistics.median(x["p50_ms"] for x in mine),
                                             "infer_per_s": statistics.median(x["infer_per_s"] for x in mine),
                                             "rounds": len(mine)}
    Path(args.out).write_text(json.dumps({"models": models, "rounds": rows, "medians": medians}, indent=1) + "\n")
    for key, value in medians.items():
        print(f"median {key}: {value}")
    return 0 if medians else 1


if __name__ == "__main__":
    sys.exit(main())
