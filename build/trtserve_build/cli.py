"""``trtserve-build``: the build's one command line (``make engines``, ``make serve``,
``make validate``). Library modules carry no argparse; every subcommand calls them.

    trtserve-build engines deployments/*.toml --variant cpu|gpu|gpu_torch|all [--precision P] [--force]
    trtserve-build validate deployments/*.toml [--precision P ...] [--samples N]
    trtserve-build validate-generate deployments/generate.toml [--precision P ...] [--out docs/results/gpt2_fidelity]
    trtserve-build precision --spec deployments/embed.toml --precision int8
    trtserve-build precision --onnx model.onnx --out hybrid.onnx --precision hybrid
    trtserve-build train deployments/sentiment.toml [--force]
    trtserve-build plan --onnx X.onnx --plan X.plan --spec deployments/embed.toml
    trtserve-build torchscript --config config.json --task classification --precision fp16 --out m.pt

Every failure the build anticipates is a :class:`~trtserve_build.core.errors.BuildError`: it is
printed as one message (exit status 2 for a bad spec, 1 for anything else), not a traceback.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Sequence

import trtserve_contract as contract

from .core.enums import PRECISIONS, TORCH_ATTENTION, TORCH_PRECISIONS, TRANSFORMED_PRECISIONS, VARIANTS
from .core.errors import BuildError, SpecError, ToleranceError
from .core.paths import REPO_ROOT, record_path, transform_report_path
from .core.spec import DeploymentSpec, load_spec
from .models.loader import random_task_model
from .pipeline import generate
from .pipeline.build import build_variant
from .pipeline.steps import precision_graph
from .pipeline.validate import run_deployment
from .runtime.tensorrt import detect_tensorrt
from .stages import decoder_fidelity, decoder_train, fidelity, tensorrt, torchscript, train
from .stages.precision import transform_file

DEFAULT_SPECS = ["deployments/sentiment.toml", "deployments/embed.toml"]
DEFAULT_FIDELITY_OUTPUT = REPO_ROOT / "results" / "fidelity.json"


def cmd_engines(args: argparse.Namespace) -> int:
    specs: list[DeploymentSpec] = [load_spec(p) for p in args.specs]
    variants = VARIANTS if args.variant == "all" else (args.variant,)
    for variant in variants:
        out = Path(args.output or REPO_ROOT / "model_repository" / variant)
        if len(variants) > 1 and args.output:
            out = out / variant
        started = time.perf_counter()
        repo = build_variant(specs, variant, out, precision=args.precision, force=args.force)
        print(f"trtserve-build: {variant} model repository ready at {repo} ({time.perf_counter() - started:.1f}s)")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    precisions = tuple(args.precisions or fidelity.VARIANT_PRECISIONS)
    reports = []
    for spec in [load_spec(p) for p in args.specs]:
        rep = run_deployment(spec, precisions, samples=args.samples, force=args.force)
        for r in rep.rows:
            print(fidelity.row_line(r))
        reports.append(rep)
    md = args.markdown or args.output.with_suffix(".md")
    data = fidelity.write_report(reports, args.output, md)
    print(f"fidelity: wrote {args.output} and {md}")
    try:
        fidelity.raise_for([g for r in reports for g in r.gates])
    except ToleranceError as e:
        print(f"fidelity: {type(e).__name__}: {e}", file=sys.stderr)
        return 0 if args.no_gate else 1
    print(f"fidelity: all gates passed ({sum(len(r.gates) for r in reports)} variants)")
    return 0 if data["passed"] or args.no_gate else 1


def cmd_validate_generate(args: argparse.Namespace) -> int:
    spec = load_spec(args.spec)
    if spec.generation is None:
        raise SpecError(f"{spec.source}: task {spec.task!r} is not generation; use `trtserve-build validate`")
    result = generate.run_fidelity(spec, tuple(args.precisions or TRANSFORMED_PRECISIONS), windows=args.windows,
                                   length=args.length)
    paths = decoder_fidelity.write_report(result, args.out)
    print(decoder_fidelity.markdown(result), end="")
    print(f"fidelity: wrote {paths[0]} and {paths[1]}")
    return 0


def cmd_precision(args: argparse.Namespace) -> int:
    if args.spec:
        path = precision_graph(load_spec(args.spec), args.precision, force=args.force)
        print(transform_report_path(path).read_text(), end="")
        return 0
    if not (args.onnx and args.out) or args.precision == "int8":
        args.parser.error("give --spec, or --onnx and --out for fp16/hybrid (int8 needs a spec for its calibration texts)")
    print(transform_file(args.onnx, args.out, args.precision, args.fp32_op), end="")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    spec = load_spec(args.spec)
    if spec.generation is not None:
        path = decoder_train.ensure_decoder_trained(spec, force=args.force)
        print(path)
        print(json.dumps({k: v for k, v in (train.read_stamp(path) or {}).items() if k != "settings"}))
        return 0
    path = train.ensure_trained(spec, force=args.force)
    stamp = train.read_stamp(path)
    print(path)
    if stamp is not None:
        print(f"holdout_accuracy={stamp['holdout_accuracy']:.4f} n_train={stamp['n_train']} "
              f"n_holdout={stamp['n_holdout']} seconds={stamp['seconds']}")
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    spec = load_spec(args.spec)
    precision = args.precision or (spec.engines["gpu"].precision if "gpu" in spec.engines else "fp32")
    flavour = detect_tensorrt()
    if not args.force and tensorrt.is_plan_current(
        args.plan, args.onnx, precision, flavour, spec=spec, compute_capabilities=args.compute_capabilities
    ):
        print(f"{args.plan} is current ({flavour.name} {flavour.version}, {precision}); use --force to rebuild")
        return 0
    if not args.onnx.is_file():
        raise BuildError(f"ONNX file not found: {args.onnx}")
    if spec.generation is not None:  # the decoder: context and decode profiles
        record = generate.build_decoder_plan(spec, args.onnx, args.plan, precision, flavour=flavour,
                                             compute_capabilities=args.compute_capabilities)
    else:
        record = tensorrt.build_plan(args.onnx, args.plan, spec, precision, flavour=flavour,
                                     workspace_gb=args.workspace_gb, compute_capabilities=args.compute_capabilities)
    print(f"{args.plan}: {record.plan_bytes} bytes, {record.tensorrt_flavour} {record.tensorrt_version}, "
          f"{record.precision}, built in {record.build_seconds:.1f} s; record {record_path(args.plan)}")
    if not record.triton_loadable:
        print("note: a TensorRT-RTX plan does not load in Triton's tensorrt backend (CI check only)")
    return 0


def cmd_torchscript(args: argparse.Namespace) -> int:
    model = random_task_model(Path(args.config), args.task, args.seed)
    feeds = torchscript.random_check_feeds(model.config.vocab_size, args.seq, args.seed)
    gate = torchscript.PrecisionGate(min_cosine=torchscript.SANITY_MIN_COSINE if args.precision != "fp32" else 0.99999)
    traced, record = torchscript.make_torchscript(model, args.task, args.precision, args.attention,
                                                  contract.ENCODER_INPUTS, feeds, gate)
    record.source = f"random weights (seed {args.seed}) for {args.config}"
    torchscript.save(traced, record, Path(args.out))
    print(json.dumps(record.metadata(), indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trtserve-build", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("engines", help="train (if needed), export, check, build engines and write the repository")
    p.add_argument("specs", nargs="+", help="deployment spec files (deployments/*.toml)")
    p.add_argument("--variant", choices=[*VARIANTS, "all"], default="cpu")
    p.add_argument("--precision", choices=PRECISIONS, help="override every spec's engine precision")
    p.add_argument("--output", help="repository folder (default model_repository/<variant>)")
    p.add_argument("--force", action="store_true", help="rebuild even the artifacts that are current")
    p.set_defaults(run=cmd_engines)

    p = sub.add_parser("validate", help="fidelity report: fp16/hybrid/int8 vs fp32 on real + stress text, with gates")
    p.add_argument("specs", nargs="*", default=DEFAULT_SPECS)
    p.add_argument("--precision", action="append", choices=TRANSFORMED_PRECISIONS, dest="precisions",
                   help="repeatable; default: fp16, hybrid and int8")
    p.add_argument("--samples", type=int, help="held-out texts per model (default: the spec's fidelity_samples)")
    p.add_argument("--output", type=Path, default=DEFAULT_FIDELITY_OUTPUT, help="JSON report (default results/fidelity.json)")
    p.add_argument("--markdown", type=Path, help="markdown table (default: the JSON path with .md)")
    p.add_argument("--no-gate", action="store_true", help="write the report, exit 0 even if a gate fails")
    p.add_argument("--force", action="store_true", help="rebuild the precision graphs and calibration")
    p.set_defaults(run=cmd_validate)

    p = sub.add_parser("validate-generate", help="GPT-2 fidelity rows: each precision vs fp32, real text and random ids")
    p.add_argument("spec", nargs="?", default="deployments/generate.toml")
    p.add_argument("--precision", action="append", choices=TRANSFORMED_PRECISIONS, dest="precisions",
                   help="repeatable; default: fp16, hybrid and int8")
    p.add_argument("--windows", type=int, default=64)
    p.add_argument("--length", type=int, default=64, help="tokens per window")
    p.add_argument("--out", type=Path, default=Path("docs/results/gpt2_fidelity"), help="writes <out>.json and <out>.md")
    p.set_defaults(run=cmd_validate_generate)

    p = sub.add_parser("precision", help="make a precision variant of an FP32 encoder graph")
    p.add_argument("--precision", required=True, choices=TRANSFORMED_PRECISIONS)
    p.add_argument("--spec", help="deployment spec TOML: writes <export dir>/<precision>.onnx (int8 calibrates)")
    p.add_argument("--onnx", type=Path, help="an FP32 graph (with --out)")
    p.add_argument("--out", type=Path)
    p.add_argument("--fp32-op", action="append", default=[], help="extra op type kept in FP32 (with --onnx; repeatable)")
    p.add_argument("--force", action="store_true")
    p.set_defaults(run=cmd_precision, parser=p)

    p = sub.add_parser("train", help="fine-tune a deployment's checkpoint from its [training] section (cached)")
    p.add_argument("spec", help="deployment spec TOML, e.g. deployments/sentiment.toml")
    p.add_argument("--force", action="store_true", help="retrain even if a matching checkpoint exists")
    p.set_defaults(run=cmd_train)

    p = sub.add_parser("plan", help="build a TensorRT plan (+ <plan>.json record) from an encoder or decoder ONNX file")
    p.add_argument("--onnx", required=True, type=Path)
    p.add_argument("--plan", required=True, type=Path)
    p.add_argument("--spec", required=True, help="deployment spec TOML (profiles come from it)")
    p.add_argument("--precision", choices=PRECISIONS, help="default: the spec's [engine.gpu] precision, else fp32")
    p.add_argument("--workspace-gb", type=float, default=tensorrt.DEFAULT_WORKSPACE_GB)
    p.add_argument("--compute-capability", action="append", dest="compute_capabilities",
                   help="TensorRT-RTX only, repeatable: target e.g. 8.6 or 'current' instead of the portable default")
    p.add_argument("--force", action="store_true", help="rebuild even if the plan is current")
    p.set_defaults(run=cmd_plan)

    p = sub.add_parser("torchscript", help="TorchScript of a random-weight model from a config.json (GPU benchmark)")
    p.add_argument("--config", required=True, help="a Hugging Face config.json (weights are random)")
    p.add_argument("--task", choices=[contract.CLASSIFICATION, contract.EMBEDDING_TASK], default=contract.CLASSIFICATION)
    p.add_argument("--precision", choices=TORCH_PRECISIONS, default="fp16")
    p.add_argument("--attention", choices=TORCH_ATTENTION, default="sdpa")
    p.add_argument("--seq", type=int, default=128, help="check rows' sequence length")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    p.set_defaults(run=cmd_torchscript)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    try:
        return args.run(args)
    except SpecError as e:
        print(f"trtserve-build: {e}", file=sys.stderr)
        return 2
    except BuildError as e:
        print(f"trtserve-build {args.command}: {type(e).__name__}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
