"""The served tokenizer, in-process: texts tokenized exactly as ``<name>_tokenizer`` does
(the export's tokenizer.json, the spec's length buckets, the same padding). Calibration, the
TorchScript check and the fidelity report all feed their executors through this."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from trtserve_backend.tokenize import BucketTokenizer

from ..core.paths import TOKENIZER_FILE, export_dir
from ..core.records import ExportManifest

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
