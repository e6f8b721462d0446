"""The served tokenizer, in-process: texts tokenized exactly as ``<name>_tokenizer`` does
(the export's tokenizer.json, the spec's length buckets, the same padding). Calibration, the
TorchScript check and the fidelity report all feed their executors through this. For a
generation deployment: prompts tokenized as the ``generate`` model does, as prompt-step feeds of
the decoder graph (past length 0)."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import trtserve_contract as contract
from trtserve_backend.tokenize import BucketTokenizer

from ..core.paths import TOKENIZER_FILE, export_dir
from ..core.lazy import lazy_import
from ..core.records import ExportManifest

tokenizers = lazy_import("tokenizers")

Encode = Callable[[list[str]], dict[str, np.ndarray]]


def bucket_tokenizer(tokenizer_file: Path, max_length: int, buckets: Sequence[int], pad_token_id: int,
                     input_names: Sequence[str]) -> BucketTokenizer:
    return BucketTokenizer.from_file(str(tokenizer_file), max_length, buckets, pad_token_id, tuple(input_names))


def spec_encoder(spec) -> Encode:
    """``encode(texts) -> feeds`` like the served ``<name>_tokenizer`` (needs the export)."""
    manifest = ExportManifest.read(export_dir(spec))
    tok = bucket_tokenizer(export_dir(spec) / TOKENIZER_FILE, spec.model.max_sequence_length,
                           spec.model.length_buckets, manifest.pad_token_id, manifest.inputs)
    return tok.encode


def prompt_feeds(ids: np.ndarray, geometry: dict[str, int], mask: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Prompt-step feeds of a decoder graph for token ids [B, S] (right-padded where ``mask`` is 0):
    positions 0..S-1 and empty past key/values of the export's ``geometry``."""
    batch, length = ids.shape
    feeds = {contract.INPUT_IDS: ids.astype(np.int64),
             contract.ATTENTION_MASK: np.ones((batch, length), np.int64) if mask is None else mask.astype(np.int64),
             contract.POSITION_IDS: np.tile(np.arange(length, dtype=np.int64), (batch, 1))}
    empty = np.zeros((batch, geometry["heads"], 0, geometry["head_dim"]), np.float32)
    for i in range(geometry["layers"]):
        feeds[contract.past_key_name(i)] = feeds[contract.past_value_name(i)] = empty
    return feeds


def decoder_encoder(spec) -> Encode:
    """``encode(texts) -> feeds``: prompts tokenized like the ``generate`` model (no special tokens,
    cut to ``max_prompt_tokens``), right-padded with EOS, as prompt-step feeds (needs the export)."""
    manifest = ExportManifest.read(export_dir(spec))
    tok = tokenizers.Tokenizer.from_file(str(export_dir(spec) / TOKENIZER_FILE))
    limit, pad = spec.generation.max_prompt_tokens, spec.generation.eos_token_id

    def encode(texts: list[str]) -> dict[str, np.ndarray]:
        rows = [tok.encode(t, add_special_tokens=False).ids[:limit] or [pad] for t in texts]
        width = max(len(r) for r in rows)
        ids, mask = np.full((len(rows), width), pad, np.int64), np.zeros((len(rows), width), np.int64)
        for i, r in enumerate(rows):
            ids[i, :len(r)], mask[i, :len(r)] = r, 1
        return prompt_feeds(ids, manifest.geometry, mask)

    return encode
