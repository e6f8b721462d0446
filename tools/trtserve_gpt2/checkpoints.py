"""GPT-2-architecture checkpoints made here: random seeded weights of a given size.

Random weights are right for timing and for the exactness tests (the served engine must equal
Hugging Face ``generate`` of the same checkpoint, whatever its weights). Every checkpoint folder
also carries the real GPT-2 tokenizer, so it loads like any GPT-2 folder.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from trtserve_build.core.paths import cache_dir
from trtserve_build.data.tokenizer_assets import GPT2_EOS_ID as EOS_ID
from trtserve_build.data.tokenizer_assets import GPT2_TOKENIZER_FILES as TOKENIZER_FILES
from trtserve_build.data.tokenizer_assets import GPT2_VOCAB_SIZE as VOCAB_SIZE
from trtserve_build.data.tokenizer_assets import gpt2_tokenizer_folder

#: Architectures by name: a tiny one for tests (fast on 2 cores) and GPT-2 124M's own shape.
SIZES = {
    "tiny": dict(n_layer=2, n_embd=64, n_head=4, n_positions=256),
    "small-default": dict(n_layer=4, n_embd=256, n_head=4, n_positions=256),
    "gpt2-124m": dict(n_layer=12, n_embd=768, n_head=12, n_positions=1024),
}


def gpt2_config(size: str = "tiny", **overrides):
    from transformers import GPT2Config

    if size not in SIZES:
        raise KeyError(f"unknown GPT-2 size {size!r}; known: {sorted(SIZES)}")
    return GPT2Config(vocab_size=VOCAB_SIZE, bos_token_id=EOS_ID, eos_token_id=EOS_ID, **{**SIZES[size], **overrides})


def gpt2_tokenizer(cache: Path | None = None) -> Path:
    """GPT-2's tokenizer folder (data/tokenizer_assets.py), under ``cache`` or the project's cache."""
    return gpt2_tokenizer_folder(Path(cache) if cache is not None else cache_dir())


def copy_tokenizer(folder: Path, cache: Path | None = None) -> None:
    source = gpt2_tokenizer(cache)
    for name in TOKENIZER_FILES:
        shutil.copy2(source / name, Path(folder) / name)


def random_checkpoint(folder: Path, size: str = "tiny", seed: int = 0, cache: Path | None = None, **overrides) -> Path:
    """Write a GPT2LMHeadModel with weights drawn from ``seed`` (cached: an existing folder made
    with the same settings is returned as is)."""
    import torch
    from transformers import GPT2LMHeadModel

    folder = Path(folder)
    stamp = {"size": size, "seed": seed, "overrides": overrides}
    record = folder / "trtserve_random.json"
    if record.is_file() and json.loads(record.read_text()) == stamp:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(gpt2_config(size, **overrides)).eval()
    model.generation_config.pad_token_id = EOS_ID
    model.save_pretrained(folder)
    copy_tokenizer(folder, cache)
    record.write_text(json.dumps(stamp) + "\n")
    return folder
