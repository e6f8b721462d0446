"""A sentiment checkpoint folder with random weights, for timing runs where the real one cannot go.

The GPU machine is reached by a 64 MiB transfer and the trained checkpoint is 90 MB. Latency
and throughput do not depend on the weights' values, only on the architecture and the token
counts: this writes the real config.json, tokenizer and training stamp (so the build uses the
folder as the spec's checkpoint instead of training) with seeded random weights in between.

    python bench/gpu/random_checkpoint.py --data .device/data/checkpoint --out $TRTSERVE_CACHE/checkpoints/sentiment
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "build"), str(ROOT / "serve"), str(ROOT / "contract")]

import trtserve_contract as contract  # noqa: E402
from trtserve_build.models.loader import random_task_model  # noqa: E402

META_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "trtserve_training.json")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="folder with the real checkpoint's " + ", ".join(META_FILES))
    parser.add_argument("--out", required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    data, out = Path(args.data), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = random_task_model(data / "config.json", contract.CLASSIFICATION, seed=args.seed)
    model.save_pretrained(str(out), safe_serialization=True)
    for name in META_FILES:  # after save_pretrained: the real config.json and stamp win
        shutil.copy2(data / name, out / name)
    print(f"random-weight checkpoint (seed {args.seed}) in {out}: {sorted(p.name for p in out.iterdir())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
