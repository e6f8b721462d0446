"""Decoder training stage: the default ``generate`` weights, a small GPT-2 trained here on text
the project ships with (a generation spec's ``[training]``, :class:`DecoderTrainingSpec`).

No GPT-2 weights are obtainable on these machines, so the default deployment serves a small
GPT-2 (the real 50,257-token tokenizer) trained from scratch for a few minutes on 2 CPU cores on
the training split of the Rotten Tomatoes snippets (the sentiment model's data; the seeded
held-out split is what the fidelity report scores). It writes movie-review-like phrases,
nothing more; point ``model.checkpoint`` at a real GPT-2 checkpoint folder for real text. The
result is an ordinary Hugging Face checkpoint folder; ``trtserve_training.json`` records the
settings it was made from (the cache key) and the held-out perplexity before and after.
"""
from __future__ import annotations

import dataclasses
import math
import random
import time
from pathlib import Path

from ..core.lazy import lazy_import
from ..core.paths import TRAINING_STAMP_FILE
from ..core.spec import DeploymentSpec
from ..core.stamps import read_json
from ..core.task_spec import DecoderTrainingSpec
from ..data.datasets import load_dataset, split_holdout
from ..data.tokenizer_assets import GPT2_EOS_ID
from ..models.gpt2 import gpt2_config, gpt2_tokenizer, save_checkpoint

torch = lazy_import("torch")
transformers = lazy_import("transformers")
tqdm = lazy_import("tqdm")


def training_settings(training: DecoderTrainingSpec, context_length: int) -> dict:
    """What a trained checkpoint is made from: the cache key stored in its stamp."""
    return {**dataclasses.asdict(training), "n_positions": context_length}


def ensure_decoder_trained(spec: DeploymentSpec, *, force: bool = False, progress: bool = True) -> Path:
    """``model.checkpoint``, trained first when the spec has ``[training]`` and the folder is
    missing or was made from other settings."""
    folder = Path(spec.checkpoint_path())
    if spec.training is None:
        return folder
    return train_decoder(folder, spec.training, spec.model.max_sequence_length, force=force, progress=progress)


def _token_stream(texts, tokenizer) -> list[int]:
    ids: list[int] = []
    for enc in tokenizer(texts)["input_ids"]:
        ids.extend(enc)
        ids.append(GPT2_EOS_ID)
    return ids


def _windows(stream, window: int, count: int, rng: random.Random):
    starts = [rng.randrange(0, len(stream) - window - 1) for _ in range(count)]
    return [stream[s:s + window] for s in starts]


def _perplexity(model, stream, window: int) -> float:
    chunks = [stream[i:i + window] for i in range(0, len(stream) - window, window)]
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(chunks), 32):
            batch = torch.tensor(chunks[i:i + 32])
            loss = model(input_ids=batch, labels=batch).loss
            total += float(loss) * batch.numel()
            count += batch.numel()
    return math.exp(total / count)


def train_decoder(folder: Path, training: DecoderTrainingSpec, context_length: int, *, force: bool = False,
                  progress: bool = True) -> Path:
    """Train (or return the cached) checkpoint in ``folder``."""
    folder = Path(folder)
    settings = training_settings(training, context_length)
    stamp = read_json(folder / TRAINING_STAMP_FILE)
    if not force and stamp is not None and stamp.get("settings") == settings and (folder / "config.json").is_file():
        return folder
    started = time.monotonic()
    torch.manual_seed(training.seed)
    rng = random.Random(training.seed)
    texts = [row.text for row in load_dataset(training.dataset)]
    train_texts, held_texts = split_holdout(texts, training.holdout_fraction, training.seed)
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(gpt2_tokenizer()))
    train_stream, held_stream = _token_stream(train_texts, tokenizer), _token_stream(held_texts, tokenizer)
    model = transformers.GPT2LMHeadModel(gpt2_config("tiny", n_layer=training.n_layer, n_embd=training.n_embd,
                                                     n_head=training.n_head, n_positions=context_length))
    before = _perplexity(model.eval(), held_stream, training.window)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=training.learning_rate, weight_decay=0.01)
    steps, warmup = training.steps, training.warmup_steps
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    bar = tqdm.tqdm(range(steps), desc=f"training the default GPT-2 ({folder.name})", disable=not progress, unit="step")
    for _ in bar:
        batch = torch.tensor(_windows(train_stream, training.window, training.batch_size, rng))
        loss = model(input_ids=batch, labels=batch).loss
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        bar.set_postfix(loss=f"{loss.detach().item():.3f}")
    model.eval()
    after = _perplexity(model, held_stream, training.window)
    return save_checkpoint(model, folder, TRAINING_STAMP_FILE, {
        "settings": settings, "train_texts": len(train_texts), "heldout_texts": len(held_texts),
        "train_tokens": len(train_stream), "heldout_perplexity_untrained": round(before, 1),
        "heldout_perplexity": round(after, 1), "seconds": round(time.monotonic() - started, 1),
        "torch_threads": torch.get_num_threads()})
