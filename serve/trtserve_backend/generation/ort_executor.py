"""The GPT-2 decoder graph with past key/values under ONNX Runtime (CPU; the embedded server).

One graph serves prompt and decode steps: inputs ``input_ids`` [B, S], ``attention_mask``
[B, P+S], ``position_ids`` [B, S] and per layer ``past_key_values.<i>.key/value`` [B, H, P, D];
outputs ``logits`` [B, S, V] and ``present.<i>.key/value`` [B, H, P+S, D]. A prompt runs alone
(P = 0). Decoding sequences are stacked into one batch whose caches are left-padded to the
longest; the mask hides the padding and each row's ``position_ids`` is its own length, so a row
computes what it would alone. The stacked cache is kept between steps and rebuilt only when a
sequence joins or leaves.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence

import numpy as np

import trtserve_contract as contract
from .sampling import greedy_tokens


class DecoderGraphError(ValueError):
    """The ONNX graph is not a decoder with past key/values as this executor expects."""


@dataclass
class _SlotCache:
    """One sequence's cache outside the stacked batch: per layer (key, value) [1, H, L, D]."""

    layers: list[tuple[np.ndarray, np.ndarray]]
    length: int


def default_intra_op_threads() -> int:
    """All usable cores but one: the decode loop shares the machine with the outbox thread and
    Triton's own threads, which handle every response; a parallel region that needs every core
    stalls whenever one of them runs (measured on 2 cores: bench/gpu/NOTES.md, session 5)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores - 1)


class OrtDecoderGraph:
    """The session and its tensor names; :meth:`run` is one call of the graph."""

    def __init__(self, onnx_path: str, intra_op_threads: int = 0):
        """``intra_op_threads`` 0: :func:`default_intra_op_threads`."""
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = intra_op_threads if intra_op_threads > 0 else default_intra_op_threads()
        self.session = ort.InferenceSession(onnx_path, options, providers=["CPUExecutionProvider"])
        inputs = {i.name: i for i in self.session.get_inputs()}
        missing = [n for n in contract.DECODER_INPUTS if n not in inputs]
        layers = 0
        while contract.past_key_name(layers) in inputs:
            layers += 1
        if missing or layers == 0:
            raise DecoderGraphError(
                f"{onnx_path}: not a decoder graph with past key/values (inputs {sorted(inputs)})")
        self.num_layers = layers
        past = inputs[contract.past_key_name(0)]
        heads, head_dim = past.shape[1], past.shape[3]
        if not isinstance(heads, int) or not isinstance(head_dim, int):
            raise DecoderGraphError(f"{onnx_path}: past key/values need static heads and head size, got {past.shape}")
        self.num_heads, self.head_dim = heads, head_dim
        self.cache_dtype = np.float16 if "float16" in past.type else np.float32
        self.output_names = [contract.LOGITS] + [
            name for i in range(layers) for name in (contract.present_key_name(i), contract.present_value_name(i))]

    def empty_past(self, batch: int) -> list[tuple[np.ndarray, np.ndarray]]:
        shape = (batch, self.num_heads, 0, self.head_dim)
        return [(np.zeros(shape, self.cache_dtype), np.zeros(shape, self.cache_dtype)) for _ in range(self.num_layers)]

    def run(self, input_ids: np.ndarray, attention_mask: np.ndarray, position_ids: np.ndarray,
            past: Sequence[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, list[tuple[np.ndarray, np.ndarray]]]:
        feeds = {contract.INPUT_IDS: input_ids, contract.ATTENTION_MASK: attention_mask,
                 contract.POSITION_IDS: position_ids}
        for i, (k, v) in enumerate(past):
            feeds[contract.past_key_name(i)] = k
            feeds[contract.past_value_name(i)] = v
        out = self.session.run(self.output_names, feeds)
        return out[0], [(out[1 + 2 * i], out[2 + 2 * i]) for i in range(self.num_layers)]


class OrtExecutor:
    """:class:`~.scheduler.DecoderExecutor` over :class:`OrtDecoderGraph`."""

    def __init__(self, graph: OrtDecoderGraph, max_batch: int):
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.graph = graph
        self.max_batch = max_batch
        self._loose: dict[int, _SlotCache] = {}  # prefilled, not yet in the stacked batch
        self._lengths: dict[int, int] = {}
        self._order: list[int] = []  # slots of the stacked batch, by row
        self._stacked: list[tuple[np.ndarray, np.ndarray]] = []
        self._mask = np.zeros((0, 0), np.int64)

    def prefill(self, slot: int, ids: Sequence[int]) -> np.ndarray:
        self.release(slot)
        n = len(ids)
        logits, present = self.graph.run(
            np.asarray([ids], np.int64), np.ones((1, n), np.int64), np.arange(n, dtype=np.int64)[None],
            self.graph.empty_past(1))
        self._loose[slot] = _SlotCache(present, n)
        self._lengths[slot] = n
        return logits[0, -1]

    def prefill_batch(self, slots: Sequence[int], prompts: Sequence[Sequence[int]]) -> np.ndarray:
        """One prompt after another (each yields the cache its sequence keeps until the next restack)."""
        return np.stack([self.prefill(slot, ids) for slot, ids in zip(slots, prompts)])

    def decode(self, slots: Sequence[int], tokens: Sequence[int]) -> np.ndarray:
        slots = list(slots)
        if len(slots) > self.max_batch:
            raise ValueError(f"{len(slots)} slots in one step; max_batch is {self.max_batch}")
        if slots != self._order:
            self._restack(slots)
        batch = len(slots)
        mask = np.concatenate([self._mask, np.ones((batch, 1), np.int64)], axis=1)
        positions = np.asarray([[self._lengths[s]] for s in slots], np.int64)
        logits, present = self.graph.run(np.asarray(tokens, np.int64).reshape(batch, 1), mask, positions, self._stacked)
        self._stacked, self._mask = present, mask
        for s in slots:
            self._lengths[s] += 1
        return logits[:, -1]

    def decode_step(self, slots: Sequence[int], tokens: Sequence[int],
                    want_logits: Sequence[bool]) -> tuple[np.ndarray, np.ndarray]:
        logits = self.decode(slots, tokens)
        return greedy_tokens(logits), logits[np.asarray(want_logits, bool)]

    def release(self, slot: int) -> None:
        self._loose.pop(slot, None)
        self._lengths.pop(slot, None)
        # The stacked batch keeps its rows until the next restack, which drops this one; the
        # placeholder makes sure a restack happens even if the slot is reused right away.
        self._order = [-1 if s == slot else s for s in self._order]

    def length(self, slot: int) -> int:
        return self._lengths[slot]

    def _slot_cache(self, slot: int) -> _SlotCache:
        if slot in self._loose:
            return self._loose.pop(slot)
        row = self._order.index(slot)
        length = self._lengths[slot]
        width = self._mask.shape[1]
        return _SlotCache([(k[row:row + 1, :, width - length:], v[row:row + 1, :, width - length:])
                           for k, v in self._stacked], length)

    def _restack(self, slots: list[int]) -> None:
        caches = [self._slot_cache(s) for s in slots]
        width = max(c.length for c in caches)
        g = self.graph
        stacked = []
        for layer in range(g.num_layers):
            pair = []
            for which in (0, 1):
                buf = np.zeros((len(slots), g.num_heads, width, g.head_dim), g.cache_dtype)
                for row, c in enumerate(caches):
                    buf[row, :, width - c.length:] = c.layers[layer][which][0]
                pair.append(buf)
            stacked.append(tuple(pair))
        mask = np.zeros((len(slots), width), np.int64)
        for row, c in enumerate(caches):
            mask[row, width - c.length:] = 1
        self._stacked, self._mask, self._order = stacked, mask, slots
