"""The default ``generate`` weights: a small GPT-2 trained here on text the project ships with.

No GPT-2 weights are obtainable on these machines, so the default deployment serves a
4-layer, 128-wide GPT-2 (the real 50,257-token tokenizer) trained from scratch for a few
minutes on 2 CPU cores on the 10,568 Rotten Tomatoes snippets of the vaderSentiment sdist (the
sentiment model's data), with a seeded 5% held-out split. It writes movie-review-like phrases,
nothing more; point the spec at a real GPT-2 checkpoint folder for real text. The result is an
ordinary Hugging Face checkpoint folder, cached; ``trtserve_training.json`` records the
settings and the held-out perplexity before and after.
"""
from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
from pathlib import Path

from .checkpoints import EOS_ID, copy_tokenizer, gpt2_config, gpt2_tokenizer

RECORD = "trtserve_training.json"
SETTINGS = {"size": "small-default", "overrides": {"n_layer": 4, "n_embd": 128, "n_head": 4, "n_positions": 256},
            "steps": 250, "batch": 4, "window": 64, "lr": 3e-3, "warmup": 25, "seed": 0, "holdout": 0.05,
            "data": "vaderSentiment 3.3.2 movieReviewSnippets_GroundTruth.txt"}


def _token_stream(texts, tokenizer) -> list[int]:
    ids: list[int] = []
    for enc in tokenizer(texts)["input_ids"]:
        ids.extend(enc)
        ids.append(EOS_ID)
    return ids


def _windows(stream, window: int, count: int, rng: random.Random):
    starts = [rng.randrange(0, len(stream) - window - 1) for _ in range(count)]
    return [stream[s:s + window] for s in starts]


def _perplexity(model, stream, window: int) -> float:
    import torch

    chunks = [stream[i:i + window] for i in range(0, len(stream) - window, window)]
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(chunks), 32):
            batch = torch.tensor(chunks[i:i + 32])
            loss = model(input_ids=batch, labels=batch).loss
            total += float(loss) * batch.numel()
            count += batch.numel()
    return math.exp(total / count)


def train_default(folder: Path, settings: dict | None = None, progress: bool = True) -> Path:
    """Train (or return the cached) default checkpoint in ``folder``."""
    import torch
    from tqdm import tqdm
    from transformers import AutoTokenizer, GPT2LMHeadModel

    from trtserve_build.data.datasets import load_vader_movie_reviews, split_holdout

    settings = settings or SETTINGS
    folder = Path(folder)
    record = folder / RECORD
    if record.is_file() and json.loads(record.read_text()).get("settings") == settings:
        return folder
    started = time.monotonic()
    torch.manual_seed(settings["seed"])
    rng = random.Random(settings["seed"])
    texts = [row.text for row in load_vader_movie_reviews()]
    train_texts, held_texts = split_holdout(texts, settings["holdout"], settings["seed"])
    tokenizer = AutoTokenizer.from_pretrained(str(gpt2_tokenizer()))
    train_stream, held_stream = _token_stream(train_texts, tokenizer), _token_stream(held_texts, tokenizer)
    model = GPT2LMHeadModel(gpt2_config(settings["size"], **settings["overrides"]))
    before = _perplexity(model.eval(), held_stream, settings["window"])
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings["lr"], weight_decay=0.01)
    steps, warmup = settings["steps"], settings["warmup"]
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    bar = tqdm(range(steps), desc="training the default GPT-2 (generate)", disable=not progress, unit="step")
    for _ in bar:
        batch = torch.tensor(_windows(train_stream, settings["window"], settings["batch"], rng))
        loss = model(input_ids=batch, labels=batch).loss
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        bar.set_postfix(loss=f"{loss.detach().item():.3f}")
    model.eval()
    after = _perplexity(model, held_stream, settings["window"])
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.generation_config.pad_token_id = EOS_ID
    model.save_pretrained(tmp)
    copy_tokenizer(tmp)
    (tmp / RECORD).write_text(json.dumps({
        "settings": settings, "train_texts": len(train_texts), "heldout_texts": len(held_texts),
        "train_tokens": len(train_stream), "heldout_perplexity_untrained": round(before, 1),
        "heldout_perplexity": round(after, 1), "seconds": round(time.monotonic() - started, 1),
        "torch_threads": torch.get_num_threads()}, indent=2) + "\n")
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
    return folder
