"""Build the served ``sentiment`` and ``embed`` gpu_torch repositories on the GPU machine, through the project's stages.

The sentiment checkpoint (90 MB FP32) does not travel with a 64 MiB run, so the encoder is the
sentiment model's architecture (its config.json: MiniLM, 6 layers, hidden 384, 2 labels) with
random weights (seeded); tokenizer.json and the export manifest are the real ones. The
TorchScript is made by trtserve_build.stages.torchscript (traced on the GPU, checked against FP32
on real review snippets) and the repository by trtserve_build.stages.repository, as `make engines
VARIANT=gpu_torch` would. Writes FP32 reference probabilities for the served correctness check,
and cross-checks the CPU build path (trace on the CPU, retarget to cuda) against the GPU trace.

Run with the image's python: ``python3 bench/gpu/build_served.py --data .device/data --work /tmp/w``.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "build"), str(ROOT / "serve"), str(ROOT / "contract"), str(ROOT)]

from timing import gpu_info, write_json  # noqa: E402

VARIANT = "gpu_torch"


def with_engine(spec, **changes):
    """``spec`` with its gpu_torch engine section changed (``topology``, ``engine_format``,
    ``idle_poll_ms``: the A/Bs against the default)."""
    import dataclasses

    engines = dict(spec.engines)
    engines[VARIANT] = dataclasses.replace(spec.engine(VARIANT), **changes)
    return dataclasses.replace(spec, engines=engines)


def log(msg: str) -> None:
    print(f"[build_served {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _force_cpu(repositories) -> None:
    from tritonclient.grpc import model_config_pb2 as mc

    from trtserve_build.core.pbtxt import read_config, write_config

    for repo in repositories:
        for path in Path(repo).glob("*/config.pbtxt"):
            config = read_config(path)
            for group in config.instance_group:
                group.kind, group.count = mc.ModelInstanceGroup.KIND_CPU, 1
            write_config(config, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="folder made by bench/gpu/pack_device.sh (.device/data)")
    parser.add_argument("--work", required=True, help="scratch folder: cache/, repository/, reference.json")
    parser.add_argument("--out", required=True, help="JSON summary")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--deployments", default="sentiment,embed")
    parser.add_argument("--reference-texts", type=int, default=64)
    parser.add_argument("--no-floors", action="store_true", help="only the default topology (no ensemble, no floors)")
    parser.add_argument("--skip-cpu-trace", action="store_true")
    parser.add_argument("--device", default="cuda", help="cpu: a dry run of this script on a machine without a GPU")
    parser.add_argument("--precision", help="override the spec's gpu_torch precision (fp32 for a fast CPU dry run)")
    parser.add_argument("--engine-format", choices=("torchscript", "fused", "aoti"), help="override the spec's "
                        "gpu_torch engine_format (the A/B of the fused encoder against the traced HF modules)")
    parser.add_argument("--idle-poll-ms", type=int, help="override the spec's gpu_torch idle_poll_ms (the opt-in "
                        "pollers, trtserve_backend/idle_poll.py)")
    args = parser.parse_args(argv)

    data, work = Path(args.data), Path(args.work)
    cache = work / "cache"
    shutil.copytree(data / "engines", cache / "engines", dirs_exist_ok=True)
    os.environ["TRTSERVE_CACHE"] = str(cache)

    import torch

    from bench.ensemble_floor import write_floor_repository
    from trtserve_backend.postprocess import l2_normalize, softmax
    from trtserve_build.core.metrics import Agreement
    from trtserve_build.core.paths import TOKENIZER_FILE, export_dir, fused_path, torchscript_path
    from trtserve_build.core.task_spec import encoder_max_batch_size
    from trtserve_build.stages import compiled
    from trtserve_build.core.records import ExportManifest
    from trtserve_build.core.spec import load_spec
    from trtserve_build.data.tokenizer import bucket_tokenizer
    from trtserve_build.models.heads import task_module
    from trtserve_build.models.loader import random_task_model
    from trtserve_build.pipeline.build import generate_repository, with_precision
    from trtserve_build.stages import torchscript as ts

    texts = [t for t in (data / "texts.txt").read_text().splitlines() if t]
    summary: dict = {"machine": gpu_info(), "weights": f"random (seed {args.seed}), sentiment config.json architecture",
                     "deployments": {}}
    device = args.device
    specs, plans, references = [], {}, {}
    for name in args.deployments.split(","):
        spec = load_spec(ROOT / "deployments" / f"{name}.toml")
        if args.precision:
            spec = with_precision(spec, VARIANT, args.precision)
        if args.engine_format:
            spec = with_engine(spec, engine_format=args.engine_format)
        if args.idle_poll_ms is not None:
            spec = with_engine(spec, idle_poll_ms=args.idle_poll_ms)
        engine = spec.engine(VARIANT)
        manifest = ExportManifest.read(export_dir(spec))
        model = random_task_model(data / "sentiment_config.json", spec.task, seed=args.seed,
                                  labels=spec.model.labels).to(device)
        feeds = bucket_tokenizer(export_dir(spec) / TOKENIZER_FILE, spec.model.max_sequence_length,
                                 spec.model.length_buckets, manifest.pad_token_id,
                                 manifest.inputs).encode(texts[:args.reference_texts])
        if engine.engine_format != "torchscript":  # the fused encoder's two programs
            traced, started = None, time.perf_counter()
            program = fused_path(spec, engine.precision, engine.engine_format)
            record = compiled.make_compiled(model, spec.task, engine.precision, manifest.inputs, feeds,
                                            ts.gate_for(spec, engine.precision), program,
                                            output=manifest.output, max_batch=encoder_max_batch_size(spec),
                                            max_seq=spec.model.max_sequence_length, device=device,
                                            engine_format=engine.engine_format)
            log(f"{name}: {engine.engine_format} programs in {time.perf_counter() - started:.0f}s")
        else:
            traced, record = ts.make_torchscript(model, spec.task, engine.precision, engine.attention, manifest.inputs,
                                                 feeds, ts.gate_for(spec, engine.precision), device=device,
                                                 target_device_type=torch.device(device).type,
                                                 pad_token_id=manifest.pad_token_id)
        record.source = f"random weights (seed {args.seed}) in the architecture of {data / 'sentiment_config.json'}"
        record.fingerprint = f"random-{args.seed}"
        if traced is None:
            path = compiled.save_record(record, program)
        else:
            path = ts.save(traced, record, torchscript_path(spec, engine.precision, engine.attention))
        summary["deployments"][name] = {engine.engine_format: {"path": str(path), "bytes": path.stat().st_size,
                                                               **record.metadata()}}
        log(f"{name}: {engine.engine_format} {path} ({path.stat().st_size / 1e6:.1f} MB): vs fp32 {record.vs_fp32}")
        specs.append(spec)
        plans[name] = path
        if name == "sentiment":
            sentiment = (spec, engine, model, feeds, manifest, traced)
        if spec.task not in ("classification", "embedding"):
            continue  # windowed tasks (qa, ner): their reference is bench/gpu/qa_ner_gpu.py's
        # FP32 reference for the served check: the same random weights, texts padded as served.
        with torch.no_grad():
            raw = task_module(model, spec.task)(
                *(torch.from_numpy(feeds[n]).to(device) for n in manifest.inputs)).float().cpu().numpy()
        output, values = ("PROBABILITIES", softmax(raw)) if spec.task == "classification" else ("EMBEDDING", l2_normalize(raw))
        references[name] = {"texts": texts[:args.reference_texts], "output": output, "values": values.tolist()}

    # The variant's default topology (single: one Python model per deployment) and the ensemble
    # of the same engines, plus each one's floor (models that do no work).
    repos = {"single": work / "repository"} if args.no_floors else {
        "single": work / "repository", "ensemble": work / "repository_ensemble"}
    generate_repository(specs, VARIANT, repos["single"], plans=plans)
    if not args.no_floors:
        generate_repository([with_engine(s, topology="ensemble") for s in specs], VARIANT, repos["ensemble"], plans=plans)
    if device == "cpu":  # a dry run without a GPU: the same repositories with KIND_CPU instances
        _force_cpu(repos.values())
    if not args.no_floors:
        names = tuple(s.name for s in specs)
        write_floor_repository(repos["single"], work / "floor_single", names)
        write_floor_repository(repos["ensemble"], work / "floor_ensemble", names)
    summary["repositories"] = {k: str(v) for k, v in repos.items()}
    for label, repo in repos.items():
        log(f"repository {label} {repo}: {sorted(p.name for p in repo.iterdir())}")
    (work / "reference.json").write_text(json.dumps(references))

    if (not args.skip_cpu_trace and device != "cpu" and "sentiment" in {s.name for s in specs}
            and sentiment[-1] is not None):  # a TorchScript build (aoti has no CPU build path)
        spec, engine, model, feeds, manifest, traced = sentiment
        # The CPU build path (no GPU on the build host): trace + check on the CPU, retarget to cuda.
        started = time.perf_counter()
        cpu_model = random_task_model(data / "sentiment_config.json", spec.task, seed=args.seed)
        small = {n: v[:16] for n, v in feeds.items()}
        cpu_traced, cpu_record = ts.make_torchscript(cpu_model, spec.task, engine.precision, engine.attention,
                                                     manifest.inputs, small, ts.gate_for(spec, engine.precision),
                                                     device="cpu", target_device_type="cuda")
        with tempfile.TemporaryDirectory() as tmp:
            ts.save(cpu_traced, cpu_record, Path(tmp) / "cpu.pt")
            loaded = torch.jit.load(str(Path(tmp) / "cpu.pt"), map_location="cuda")
        args_gpu = [torch.from_numpy(feeds[n]).cuda() for n in manifest.inputs]
        with torch.no_grad():
            a = loaded(*args_gpu).float().cpu().numpy()
            b = traced(*args_gpu).float().cpu().numpy()
        agreement = Agreement.measure(b, a)
        summary["cpu_trace_retargeted_vs_gpu_trace"] = {
            "retargeted_constants": cpu_record.retargeted_constants, **asdict(agreement),
            "seconds": round(time.perf_counter() - started, 1)}
        log(f"CPU-traced, retargeted module on cuda vs GPU trace: {summary['cpu_trace_retargeted_vs_gpu_trace']}")
    write_json(args.out, summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
