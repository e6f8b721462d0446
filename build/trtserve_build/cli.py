"""`trtserve-build`: the build pipeline's front door (called by `make engines` / `make serve`)."""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from .spec import REPO_ROOT, VARIANTS, DeploymentSpec, SpecError, load_spec
from .pipeline import build_variant


def engines(args: argparse.Namespace) -> int:
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="trtserve-build", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("engines", help="train (if needed), export, check, build engines and write the repository")
    p.add_argument("specs", nargs="+", help="deployment spec files (deployments/*.toml)")
    p.add_argument("--variant", choices=[*VARIANTS, "all"], default="cpu")
    p.add_argument("--precision", help="override every spec's engine precision")
    p.add_argument("--output", help="repository folder (default model_repository/<variant>)")
    p.add_argument("--force", action="store_true", help="rebuild even the artifacts that are current")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        return engines(args)
    except SpecError as e:
        print(f"trtserve-build: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
