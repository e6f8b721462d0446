"""``python -m trtserve_gpt2.cli add-generate <repository>``: the default ``generate`` model, cached.

Tokenizer (npm) -> checkpoint (the small default trained here, or ``--checkpoint`` a GPT-2 folder)
-> ONNX with past key/values (checked against PyTorch) -> ``<repository>/generate``. Each stage
is cached under ``.cache`` by what it was made from, so a second run only copies files.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

from trtserve_backend.generation.requests import GenerationLimits
from trtserve_build.core.paths import cache_dir

from .export import export_decoder
from .repository import GenerateSettings, write_generate_model

DEFAULT_LIMITS = GenerationLimits(context_length=256, max_prompt_tokens=128, max_new_tokens=128,
                                  default_max_new_tokens=32, max_sequences=32)


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(Path(folder).iterdir()):
        if f.is_file() and (f.suffix in (".safetensors", ".bin") or f.name == "config.json"):
            h.update(f.name.encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


def cached_export(checkpoint: Path, cache: Path) -> Path:
    out = cache / "engines" / "generate"
    record = out / "export_record.json"
    digest = _digest(checkpoint)
    if record.is_file() and json.loads(record.read_text()).get("checkpoint_sha") == digest and (out / "model.onnx").is_file():
        return out / "model.onnx"
    path = export_decoder(checkpoint, out)
    data = json.loads(record.read_text())
    data["checkpoint_sha"] = digest
    record.write_text(json.dumps(data, indent=2) + "\n")
    return path


def add_generate(repository: Path, checkpoint: Path | None = None, limits: GenerationLimits = DEFAULT_LIMITS) -> Path:
    cache = cache_dir()
    if checkpoint is None:
        from .train import train_default

        checkpoint = train_default(cache / "checkpoints" / "generate")
    onnx_path = cached_export(Path(checkpoint), cache)
    return write_generate_model(repository, onnx_path, Path(checkpoint), GenerateSettings(limits=limits))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="trtserve_gpt2", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    add = sub.add_parser("add-generate", help="write the generate model into a model repository")
    add.add_argument("repository", type=Path)
    add.add_argument("--checkpoint", type=Path, default=None, help="a GPT-2 checkpoint folder (default: the trained small one)")
    args = parser.parse_args(argv)
    print(f"generate: {add_generate(args.repository, args.checkpoint)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
