"""Fine-tune a deployment's classifier from its ``[training]`` section, once, then cache it.

``ensure_trained(spec)`` returns a local Hugging Face checkpoint folder for the spec:

* no ``[training]`` section: the resolved ``model.checkpoint`` (nothing is trained);
* otherwise ``model.checkpoint`` itself, trained on first use. The folder carries a stamp
  (``trtserve_training.json``) with the fingerprint of the spec's ``training`` and ``model``
  sections; a matching stamp is a cache hit, anything else retrains.

Training: ``BertForSequenceClassification`` on the base checkpoint with a fresh head whose
config names the spec's labels, AdamW with linear warmup/decay, per-batch (dynamic) padding,
evaluation on a seeded held-out split. The folder is written next to the target and renamed
into place only if the held-out accuracy reaches ``min_holdout_accuracy``.

CLI: ``trtserve-build train deployments/sentiment.toml [--force]``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import math
import os
import random
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from ..core.errors import TrainingError
from ..core.files import building
from ..core.lazy import lazy_import
from ..core.paths import TRAINING_STAMP_FILE
from ..core.spec import DeploymentSpec, TrainingSpec
from ..core.stamps import digest, read_json
from ..data.checkpoints import resolve_checkpoint
from ..data.datasets import LabelledText, dataset_labels, load_dataset, split_holdout
from ..models.loader import new_classifier

# heavy modules load on first use: the cache-hit path never imports them
torch = lazy_import("torch")
transformers = lazy_import("transformers")
tqdm = lazy_import("tqdm")

STAMP_FILE = TRAINING_STAMP_FILE
#: ``trainer(spec, target folder, fingerprint) -> stamp``: fine-tune and publish a checkpoint.
Trainer = Callable[[DeploymentSpec, Path, str], dict]
#: Files a published checkpoint folder must hold besides the stamp.
REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json")
WARMUP_FRACTION = 0.1
WEIGHT_DECAY = 0.01
MAX_GRAD_NORM = 1.0
EVAL_BATCH_SIZE = 128


@dataclass(frozen=True)
class TrainingData:
    """The seeded split, with labels already mapped to the spec's label ids."""

    train: list[LabelledText]
    holdout: list[LabelledText]


# ---- cache detection ------------------------------------------------------------------


def training_fingerprint(spec: DeploymentSpec) -> str:
    """Cache key of a trained checkpoint: what the folder depends on.

    The training recipe, the label names, the tokenizer's saved max length and the folder
    itself; not serving-only settings such as length buckets, which must not cause retraining.
    """
    m = spec.model
    payload = {
        "training": dataclasses.asdict(spec.training) if spec.training else None,
        "labels": list(m.labels),
        "max_sequence_length": m.max_sequence_length,
        "checkpoint": m.checkpoint,
    }
    return digest(payload)


def read_stamp(folder: Path) -> dict[str, Any] | None:
    """The folder's training stamp, or None when it is missing or unreadable."""
    return read_json(Path(folder) / STAMP_FILE)


def is_up_to_date(folder: Path, fingerprint: str) -> bool:
    """True when ``folder`` holds a complete checkpoint stamped with ``fingerprint``."""
    folder = Path(folder)
    stamp = read_stamp(folder)
    if stamp is None or stamp.get("fingerprint") != fingerprint:
        return False
    return all((folder / name).is_file() for name in REQUIRED_FILES)


# ---- entry point ----------------------------------------------------------------------


def ensure_trained(spec: DeploymentSpec, *, force: bool = False, trainer: Trainer | None = None) -> Path:
    """Return the spec's checkpoint folder, fine-tuning it first when needed (see module doc).

    ``trainer(spec, target, fingerprint)`` does the fine-tuning and publishing (default
    :func:`train_and_publish`); it runs under the checkpoint's lock, only on a cache miss."""
    if spec.training is None:
        return resolve_checkpoint(spec.model.checkpoint)
    target = Path(spec.checkpoint_path())
    fingerprint = training_fingerprint(spec)
    if not force and is_up_to_date(target, fingerprint):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive_lock(target):
        # Another process may have finished the same training while we waited.
        if not force and is_up_to_date(target, fingerprint):
            return target
        _remove_leftovers(target)
        (train_and_publish if trainer is None else trainer)(spec, target, fingerprint)
    return target


@contextlib.contextmanager
def _exclusive_lock(target: Path) -> Iterator[None]:
    """Serialize training of one checkpoint across processes (an flock next to it)."""
    with open(target.parent / f".{target.name}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _remove_leftovers(target: Path) -> None:
    """Delete temporary folders of interrupted runs (safe: we hold the lock)."""
    for stale in target.parent.glob(f".{target.name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)


def train_and_publish(spec: DeploymentSpec, target: Path, fingerprint: str) -> dict[str, Any]:
    """Fine-tune, evaluate, and (if accurate enough) atomically publish to ``target``."""
    tspec = _training_spec(spec)
    started = time.monotonic()
    torch.set_num_threads(os.cpu_count() or 1)
    base = resolve_checkpoint(tspec.base_checkpoint)
    data = prepare_data(tspec, spec.model.labels)
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(base))
    model = build_model(base, spec.model.labels, tspec.seed)
    final_loss = train_epochs(model, tokenizer, data.train, tspec)
    accuracy = evaluate(model, tokenizer, data.holdout, tspec.max_sequence_length)
    seconds = time.monotonic() - started
    run = {"holdout_accuracy": accuracy, "n_train": len(data.train), "n_holdout": len(data.holdout),
           "seconds": seconds, "final_train_loss": final_loss, "torch_threads": torch.get_num_threads()}
    check_accuracy(spec, run, target)
    reset_tokenizer_state(tokenizer, spec.model.max_sequence_length)
    stamp = make_stamp(spec, fingerprint, run)
    publish(model, tokenizer, target, stamp)
    return stamp


def check_accuracy(spec: DeploymentSpec, run: dict[str, Any], target: Path) -> None:
    """Raise :class:`TrainingError` when held-out accuracy is below the spec's minimum."""
    tspec = _training_spec(spec)
    if run["holdout_accuracy"] >= tspec.min_holdout_accuracy:
        return
    raise TrainingError(
        f"{spec.name}: held-out accuracy {run['holdout_accuracy']:.4f} on {run['n_holdout']} sentences is "
        f"below training.min_holdout_accuracy {tspec.min_holdout_accuracy:.4f} (trained on {run['n_train']} "
        f"sentences, {tspec.epochs} epoch(s), lr {tspec.learning_rate}, final loss "
        f"{run['final_train_loss']:.4f}, {run['seconds']:.0f} s); nothing was written to {target}"
    )


def make_stamp(spec: DeploymentSpec, fingerprint: str, run: dict[str, Any]) -> dict[str, Any]:
    """The ``trtserve_training.json`` content: cache key, the run's numbers, the recipe."""
    tspec = _training_spec(spec)
    return {
        "fingerprint": fingerprint,
        "holdout_accuracy": round(run["holdout_accuracy"], 6),
        "n_train": run["n_train"],
        "n_holdout": run["n_holdout"],
        "seconds": round(run["seconds"], 1),
        "final_train_loss": round(run["final_train_loss"], 6),
        "torch_threads": run["torch_threads"],
        "seed": tspec.seed,
        "base_checkpoint": tspec.base_checkpoint,
        "dataset": tspec.dataset,
        "labels": list(spec.model.labels),
        "epochs": tspec.epochs,
        "batch_size": tspec.batch_size,
        "learning_rate": tspec.learning_rate,
        "max_sequence_length": tspec.max_sequence_length,
    }


def _training_spec(spec: DeploymentSpec) -> TrainingSpec:
    if spec.training is None:
        raise TrainingError(f"{spec.source}: no [training] section")
    return spec.training


# ---- data -----------------------------------------------------------------------------


def prepare_data(tspec: TrainingSpec, labels: Sequence[str]) -> TrainingData:
    """Load the dataset, map its label ids onto ``labels`` by name, and split it."""
    remap = label_remap(dataset_labels(tspec.dataset), labels, tspec.dataset)
    rows = [LabelledText(r.text, remap[r.label], r.score) for r in load_dataset(tspec.dataset)]
    train, holdout = split_holdout(rows, tspec.holdout_fraction, tspec.seed)
    return TrainingData(train=train, holdout=holdout)


def label_remap(dataset_names: Sequence[str], spec_labels: Sequence[str], dataset: str) -> list[int]:
    """Spec label id for each dataset label id; the two label sets must be the same names."""
    if sorted(dataset_names) != sorted(spec_labels):
        raise TrainingError(
            f"dataset {dataset!r} has labels {list(dataset_names)} but model.labels is {list(spec_labels)}; "
            f"they must name the same classes (in any order)"
        )
    return [list(spec_labels).index(name) for name in dataset_names]


def iter_batches(
    rows: Sequence[LabelledText],
    tokenizer: Any,
    batch_size: int,
    max_length: int,
    rng: random.Random | None = None,
) -> Iterator[dict[str, torch.Tensor]]:
    """Tokenized batches padded to their own longest row (truncated to ``max_length``).

    With ``rng`` the rows are visited in a shuffled order; without, in the given order.
    """
    order = list(range(len(rows)))
    if rng is not None:
        rng.shuffle(order)
    for start in range(0, len(order), batch_size):
        chunk = [rows[i] for i in order[start : start + batch_size]]
        enc = tokenizer(
            [r.text for r in chunk],
            padding="longest",
            truncation=True,
            max_length=max_length,
            return_tensors="pt",
        )
        enc["labels"] = torch.tensor([r.label for r in chunk], dtype=torch.long)
        yield dict(enc)


# ---- model, training, evaluation ------------------------------------------------------


def build_model(base: Path, labels: Sequence[str], seed: int):
    """The base encoder with a fresh, seeded classification head named after ``labels``."""
    return new_classifier(base, labels, seed)


def train_epochs(
    model: Any,
    tokenizer: Any,
    rows: Sequence[LabelledText],
    tspec: TrainingSpec,
) -> float:
    """AdamW + linear warmup/decay over ``tspec.epochs``; returns the last epoch's mean loss."""
    steps_per_epoch = math.ceil(len(rows) / tspec.batch_size)
    total_steps = steps_per_epoch * tspec.epochs
    optimizer = torch.optim.AdamW(model.parameters(), lr=tspec.learning_rate, weight_decay=WEIGHT_DECAY)
    scheduler = transformers.get_linear_schedule_with_warmup(optimizer, round(WARMUP_FRACTION * total_steps), total_steps)
    rng = random.Random(tspec.seed)
    model.train()
    epoch_loss = float("nan")
    for epoch in range(1, tspec.epochs + 1):
        batches = iter_batches(rows, tokenizer, tspec.batch_size, tspec.max_sequence_length, rng)
        bar = tqdm.tqdm(batches, total=steps_per_epoch, desc=f"epoch {epoch}/{tspec.epochs}", file=sys.stderr)
        epoch_loss = _run_epoch(model, bar, optimizer, scheduler)
    model.eval()
    return epoch_loss


def _run_epoch(model: Any, bar: Any, optimizer: Any, scheduler: Any) -> float:
    """Train on every batch of ``bar`` (a tqdm bar), showing the running mean loss."""
    total = 0.0
    count = 0
    for batch in bar:
        total += _train_step(model, batch, optimizer, scheduler)
        count += 1
        bar.set_postfix(loss=f"{total / count:.4f}", refresh=False)
    bar.close()
    return total / max(count, 1)


def _train_step(model: Any, batch: dict[str, torch.Tensor], optimizer: Any, scheduler: Any) -> float:
    """One optimizer step; returns the batch loss."""
    loss = model(**batch).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_GRAD_NORM)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return float(loss.detach())


def evaluate(
    model: Any,
    tokenizer: Any,
    rows: Sequence[LabelledText],
    max_length: int,
) -> float:
    """Accuracy of ``model`` on ``rows`` (argmax of the logits vs the label ids)."""
    model.eval()
    correct = 0
    with torch.inference_mode():
        for batch in iter_batches(rows, tokenizer, EVAL_BATCH_SIZE, max_length):
            labels = batch.pop("labels")
            predicted = model(**batch).logits.argmax(dim=-1)
            correct += int((predicted == labels).sum())
    return correct / len(rows)


# ---- publishing -----------------------------------------------------------------------


def reset_tokenizer_state(tokenizer: Any, max_length: int) -> None:
    """Drop training-time padding/truncation from the fast tokenizer before it is saved.

    Every ``tokenizer(...)`` call leaves its padding/truncation settings on the Rust backend,
    and ``tokenizer.json`` records them; without this the file would say "truncate at the
    training length, pad to the longest" to whoever loads it. The saved file truncates at the
    deployment's ``model.max_sequence_length`` and does not pad.
    """
    backend = tokenizer.backend_tokenizer
    backend.no_padding()
    backend.enable_truncation(max_length=max_length)


def publish(model: Any, tokenizer: Any, target: Path, stamp: dict[str, Any]) -> None:
    """Save model (safetensors), tokenizer and stamp next to ``target``, then swap it in."""
    with building(target, prefix=f".{target.name}.tmp-") as tmp:
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        missing = [name for name in REQUIRED_FILES if not (tmp / name).is_file()]
        if missing:
            raise TrainingError(f"saving the checkpoint to {tmp} did not produce {missing}")
        (tmp / STAMP_FILE).write_text(json.dumps(stamp, indent=2, sort_keys=True) + "\n")
