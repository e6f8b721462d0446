"""Seeded random checkpoints of every architecture, saved as ordinary Hugging Face folders.

One folder per (architecture, size): a ``<Arch>ForSequenceClassification`` with a 2-way head
and the architecture's tokenizer. ``AutoModel.from_pretrained`` on the same folder gives the bare
encoder (for embeddings), so one folder serves both tasks. Random weights: right for export,
precision, engine building, serving parity and timing; meaningless for accuracy. Cached under
``<cache>/archs/checkpoints/``.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

from ..core import architectures as A
from ..core.files import building
from ..core.lazy import lazy_import
from ..core.paths import cache_dir
from ..data.tokenizer_assets import tokenizer_folder

torch = lazy_import("torch")
transformers = lazy_import("transformers")

log = logging.getLogger(__name__)

#: Not the review dataset's labels: a random head's predictions are no sentiment, so the fidelity
#: report must not score them as accuracy (it does only for a spec whose labels are the dataset's).
LABELS = ("label_0", "label_1")
SEED = 1234
CHECKPOINT_VERSION = "2"


def default_cache() -> Path:
    return cache_dir() / "archs"


def build_model(arch: A.Architecture, tokenizer, *, size: str = "tiny", seed: int = SEED):
    """A seeded random ``<Arch>ForSequenceClassification`` matching ``tokenizer``'s vocabulary."""
    kwargs = arch.config_kwargs(len(tokenizer), int(tokenizer.pad_token_id), size=size)
    config = transformers.AutoConfig.for_model(
        arch.model_type, num_labels=len(LABELS), id2label=dict(enumerate(LABELS)),
        label2id={l: i for i, l in enumerate(LABELS)}, **kwargs)
    if getattr(config, "bos_token_id", None) is not None and tokenizer.bos_token_id is not None:
        config.bos_token_id = int(tokenizer.bos_token_id)
    if getattr(config, "eos_token_id", None) is not None and tokenizer.eos_token_id is not None:
        config.eos_token_id = int(tokenizer.eos_token_id)
    torch.manual_seed(seed)
    model = transformers.AutoModelForSequenceClassification.from_config(config, attn_implementation="eager")
    return model.eval()


def checkpoint_folder(name: str, cache: Path | None = None, *, size: str = "tiny") -> Path:
    """``<cache>/checkpoints/<name>-<size>``: config, seeded weights and tokenizer (built once)."""
    arch = A.get_architecture(name)
    cache = Path(cache) if cache is not None else default_cache()
    folder = cache / "checkpoints" / f"{arch.name}-{size}"
    stamp = folder / "trtserve_checkpoint.json"
    want = {"version": CHECKPOINT_VERSION, "architecture": arch.name, "size": size, "seed": SEED}
    if stamp.is_file() and json.loads(stamp.read_text()) == want:
        return folder
    tokenizer = transformers.AutoTokenizer.from_pretrained(tokenizer_folder(arch, cache))
    model = build_model(arch, tokenizer, size=size)
    with building(folder, prefix=f".{folder.name}-") as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / stamp.name).write_text(json.dumps(want, indent=2) + "\n")
    log.info("%s: %s checkpoint (%d parameters) in %s", arch.name, size,
             sum(p.numel() for p in model.parameters()), folder)
    return folder
