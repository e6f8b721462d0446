"""How the requests of one Triton execution become engine batches (shared by every encoder).

The encoders' inputs allow ragged batches, so one execution may hold requests that the
tokenizer padded to different length buckets. ``merge="pad"`` runs them as one batch, every
request right-padded with zeros to the longest of them (padding is masked out, so each row's
result is unchanged); ``merge="group"`` runs one batch per distinct length.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Callable, Mapping, Sequence

import numpy as np

MERGE_MODES = ("pad", "group")


def group_by_length(requests: Sequence[Mapping[str, object]], key: str) -> dict[int, list[int]]:
    """Request indices grouped by sequence length (the tokenizer pads each request to a bucket)."""
    groups: dict[int, list[int]] = defaultdict(list)
    for i, feeds in enumerate(requests):
        groups[int(feeds[key].shape[1])].append(i)
    return dict(groups)


def check_merge(merge: str) -> str:
    if merge not in MERGE_MODES:
        raise ValueError(f"merge {merge!r}; known: {MERGE_MODES}")
    return merge


def plan_batches(requests: Sequence[Mapping[str, object]], key: str, merge: str) -> dict[int, list[int]]:
    """{sequence length: request indices} for each engine batch of one execution."""
    if check_merge(merge) == "pad":
        return {max(int(r[key].shape[1]) for r in requests): list(range(len(requests)))}
    return group_by_length(requests, key)


def _numpy_zeros(shape: tuple[int, int], like: np.ndarray) -> np.ndarray:
    return np.zeros(shape, dtype=like.dtype)


def pad_merge(requests: Sequence[Mapping[str, object]], names: Sequence[str], length: int, *,
              as_array: Callable = np.asarray, zeros: Callable = _numpy_zeros) -> Mapping[str, object]:
    """Concatenate the requests' rows, right-padding each to ``length`` with zeros.

    numpy by default; an engine on another array library passes its own ``as_array`` and
    ``zeros(shape, like)`` (the torch engine: tensors on the inputs' device).
    """
    if len(requests) == 1 and int(requests[0][names[0]].shape[1]) == length:
        return requests[0]
    merged = {}
    for name in names:
        parts = [as_array(r[name]) for r in requests]
        out = zeros((sum(int(p.shape[0]) for p in parts), length), parts[0])
        start = 0
        for p in parts:
            out[start:start + p.shape[0], :p.shape[1]] = p
            start += p.shape[0]
        merged[name] = out
    return merged


def split_rows(out, requests: Sequence[Mapping[str, object]], members: Sequence[int], key: str,
               results: list) -> None:
    """Hand each member request its rows of a batch output (in place into ``results``)."""
    start = 0
    for i in members:
        rows = requests[i][key].shape[0]
        results[i] = out[start:start + rows]
        start += rows
