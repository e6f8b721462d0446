"""GPT-2 in PyTorch with a static KV cache on the device and CUDA graphs for decode steps.

The cache is one pair of tensors [layers, max_batch, heads, max_length, head_dim] allocated
once, so a decode step has the same shapes every time and can be captured as a CUDA graph per
configured batch size (a step of n sequences replays the smallest graph of >= n rows; the extra
rows are free cache rows and their outputs are ignored). Live sequences occupy rows 0..n-1: a
sequence that leaves has its row filled by the last one (one row copied on the device), so a
step never gathers. Attention covers all max_length positions with a mask of each row's own
length, so shapes stay static.

Prompts that join at the same step boundary run as one batch, right-padded to the longest: a
row's real positions only attend to earlier positions (causal), so the padding changes nothing
they compute; what the padded positions write past a row's end is overwritten by its decode
steps before anything attends to it. On a GPU the prompt batches replay CUDA graphs too, one
per (rows, padded length) bucket, writing into a scratch cache that is then copied into the
sequences' rows (a prompt step eager is ~180 kernel launches: milliseconds, during which every
decoding stream waits). Prompts longer than the largest bucket run eagerly.

The weights are those of a Hugging Face ``GPT2LMHeadModel``; the forward is GPT-2's (pre-LN
blocks, GELU-tanh MLP, tied LM head). On the CPU (no graphs) it runs eagerly: the unit tests
check it there against ``generate``.
"""
from __future__ import annotations

import logging
import math
from typing import Sequence

import numpy as np

log = logging.getLogger(__name__)

_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


class TorchExecutor:
    """:class:`~.scheduler.DecoderExecutor` over a static-cache GPT-2."""

    def __init__(self, config: dict, weights: dict, max_batch: int, max_length: int | None = None, dtype: str = "fp32",
                 device: str | None = None, graph_batch_sizes: Sequence[int] = (), max_prompt: int | None = None):
        """``config``: a GPT-2 config.json as a dict; ``weights``: the ``transformer.*`` tensors (prefix optional).
        ``graph_batch_sizes``: decode steps captured as CUDA graphs (on a GPU; none: all eager);
        with them, prompt batches are captured for :func:`prefill_buckets` (``max_prompt``)."""
        import torch

        self.torch = torch
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.dtype = getattr(torch, _DTYPES[dtype])
        self.max_batch = max_batch
        positions = int(config["n_positions"])
        self.max_length = max_length or positions
        if self.max_length > positions:
            raise ValueError(f"max_length {self.max_length} > the model's {positions} positions")
        self.layers, self.heads = int(config["n_layer"]), int(config["n_head"])
        self.head_dim = int(config["n_embd"]) // self.heads
        self.eps = float(config.get("layer_norm_epsilon", 1e-5))
        self.w = {k.removeprefix("transformer."): v.detach().to(self.device, self.dtype) for k, v in weights.items()
                  if not k.startswith("lm_head")}
        if "wte.weight" not in self.w:
            raise ValueError(f"not GPT-2 weights: no transformer.wte.weight among {sorted(weights)[:5]} ...")
        shape = (self.layers, max_batch, self.heads, self.max_length, self.head_dim)
        self.k_cache = torch.zeros(shape, device=self.device, dtype=self.dtype)
        self.v_cache = torch.zeros(shape, device=self.device, dtype=self.dtype)
        self._row_of: dict[int, int] = {}  # slot -> cache row
        self._length: dict[int, int] = {}
        self._graphs: dict[int, tuple] = {}
        self._prefill_graphs: dict[tuple[int, int], tuple] = {}  # (rows, padded length) -> graph
        self._key_index = torch.arange(self.max_length, device=self.device)
        if graph_batch_sizes and self.device.type == "cuda":
            pool = self._capture(sorted({min(b, max_batch) for b in graph_batch_sizes}))
            rows, lengths = prefill_buckets(max_batch, max_prompt or self.max_length, self.max_length)
            self._capture_prefill(rows, lengths, pool)

    @classmethod
    def from_checkpoint(cls, folder: str, **kwargs) -> "TorchExecutor":
        """A GPT-2 checkpoint folder (config.json + model.safetensors | pytorch_model.bin), read
        without ``transformers`` (the GPU server's stub environment cannot import it)."""
        import json
        import os

        with open(os.path.join(folder, "config.json"), encoding="utf-8") as f:
            config = json.load(f)
        safetensors_file = os.path.join(folder, "model.safetensors")
        if os.path.exists(safetensors_file):
            from safetensors.torch import load_file

            weights = load_file(safetensors_file)
        else:
            import torch

            weights = torch.load(os.path.join(folder, "pytorch_model.bin"), map_location="cpu", weights_only=True)
        return cls(config, weights, **kwargs)

    # ---- the model ------------------------------------------------------------------------

    def _ln(self, x, prefix):
        return self.torch.nn.functional.layer_norm(x, (x.shape[-1],), self.w[prefix + ".weight"], self.w[prefix + ".bias"], self.eps)

    def _linear(self, x, prefix):  # GPT-2's Conv1D: weight [in, out]
        return self.torch.addmm(self.w[prefix + ".bias"], x.reshape(-1, x.shape[-1]), self.w[prefix + ".weight"]).reshape(*x.shape[:-1], -1)

    def _forward(self, keys_out, values_out, tokens, positions, attend):
        """``keys_out``/``values_out``: the caches [layers, b, H, L, D] of these rows (views);
        tokens/positions [b, s]; attend [b | 1, s, L] bool. Writes the new keys/values into the
        caches; returns the last hidden states [b, s, E] (before the final LayerNorm)."""
        torch = self.torch
        b, s = tokens.shape
        batch_index = torch.arange(b, device=self.device)[:, None].expand(b, s)
        x = self.w["wte.weight"][tokens] + self.w["wpe.weight"][positions]
        bias = torch.zeros(attend.shape, device=self.device, dtype=self.dtype).masked_fill(~attend, torch.finfo(self.dtype).min)
        bias = bias[:, None]  # [b, 1, s, L]
        for i in range(self.layers):
            p = f"h.{i}"
            qkv = self._linear(self._ln(x, p + ".ln_1"), p + ".attn.c_attn")
            q, k, v = qkv.split(self.heads * self.head_dim, dim=-1)
            q, k, v = (t.view(b, s, self.heads, self.head_dim).transpose(1, 2) for t in (q, k, v))
            keys, values = keys_out[i], values_out[i]  # views [b, H, L, D]
            keys[batch_index, :, positions] = k.transpose(1, 2)
            values[batch_index, :, positions] = v.transpose(1, 2)
            scores = torch.matmul(q, keys.transpose(-1, -2)) / math.sqrt(self.head_dim) + bias
            probs = torch.softmax(scores.float(), dim=-1).to(self.dtype)
            attn = torch.matmul(probs, values).transpose(1, 2).reshape(b, s, -1)
            x = x + self._linear(attn, p + ".attn.c_proj")
            h = self._linear(self._ln(x, p + ".ln_2"), p + ".mlp.c_fc")
            x = x + self._linear(torch.nn.functional.gelu(h, approximate="tanh"), p + ".mlp.c_proj")
        return x

    def _logits(self, x):
        return self.torch.matmul(self._ln(x, "ln_f"), self.w["wte.weight"].t())

    def _decode_rows(self, tokens, positions):
        """One decode step for rows 0..b-1 (tokens/positions [b]); logits [b, V]."""
        b = tokens.shape[0]
        attend = (self._key_index[None, :] <= positions[:, None])[:, None, :]
        return self._logits(self._forward(self.k_cache[:, :b], self.v_cache[:, :b], tokens[:, None],
                                          positions[:, None], attend)[:, 0])

    def _prefill_rows(self, keys_out, values_out, tokens, lengths):
        """Prompts right-padded into tokens [b, s], each ``lengths`` [b] long, into caches
        [layers, b, H, >= s, D]; the logits [b, V] of each prompt's last token."""
        torch = self.torch
        b, s = tokens.shape
        positions = torch.arange(s, device=self.device)
        attend = (self._key_index[None, :keys_out.shape[3]] <= positions[:, None])[None]  # causal [1, s, L]
        x = self._forward(keys_out, values_out, tokens, positions[None].expand(b, s), attend)
        return self._logits(x[torch.arange(b, device=self.device), lengths - 1])

    # ---- CUDA graphs ----------------------------------------------------------------------

    def _capture(self, batch_sizes: list[int]) -> None:
        """One graph per batch size: tokens and positions in (one [2, b] tensor, so a step makes
        one host-to-device copy), logits and their argmax out (so greedy rows bring back ids only)."""
        torch = self.torch
        pool = None
        for b in sorted(batch_sizes, reverse=True):
            io = torch.zeros(2, b, dtype=torch.long, device=self.device)
            tokens, positions = io[0], io[1]
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(2):  # warm-up outside the graph
                    self._decode_rows(tokens, positions).argmax(-1)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                logits = self._decode_rows(tokens, positions)
                best = logits.argmax(-1)
            pool = graph.pool()
            self._graphs[b] = (graph, io, logits, best)
        log.info("captured decode CUDA graphs for batch sizes %s", sorted(self._graphs))
        return pool

    def _capture_prefill(self, rows: Sequence[int], lengths: Sequence[int], pool) -> None:
        """One graph per (rows, padded length): tokens and lengths in (one [b, s + 1] tensor: the
        last column is each row's length), last-token logits out; keys/values go to one scratch
        cache shared by all of them, copied into the sequences' rows after a replay."""
        torch = self.torch
        if not rows or not lengths:
            return
        shape = (self.layers, max(rows), self.heads, max(lengths), self.head_dim)
        self._prefill_k = torch.zeros(shape, device=self.device, dtype=self.dtype)
        self._prefill_v = torch.zeros(shape, device=self.device, dtype=self.dtype)
        for s in sorted(lengths, reverse=True):
            for b in sorted(rows, reverse=True):
                io = torch.ones(b, s + 1, dtype=torch.long, device=self.device)
                keys, values = self._prefill_k[:, :b, :, :s], self._prefill_v[:, :b, :, :s]
                stream = torch.cuda.Stream()
                stream.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(stream):
                    self._prefill_rows(keys, values, io[:, :s], io[:, s])  # warm-up outside the graph
                torch.cuda.current_stream().wait_stream(stream)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=pool):
                    logits = self._prefill_rows(keys, values, io[:, :s], io[:, s])
                pool = graph.pool()
                self._prefill_graphs[(b, s)] = (graph, io, logits)
        log.info("captured prompt CUDA graphs for %s rows x %s tokens", sorted(rows), sorted(lengths))

    # ---- DecoderExecutor ------------------------------------------------------------------

    def prefill(self, slot: int, ids: Sequence[int]) -> np.ndarray:
        return self.prefill_batch([slot], [ids])[0]

    def prefill_batch(self, slots: Sequence[int], prompts: Sequence[Sequence[int]]) -> np.ndarray:
        """The prompts into new caches for ``slots``, as few batched calls as the buckets allow;
        the logits [len(slots), V] of each prompt's last token."""
        for slot in slots:
            self.release(slot)
        if len(self._row_of) + len(slots) > self.max_batch:
            raise RuntimeError(f"no free cache row for {len(slots)} prompts (max_batch {self.max_batch}, "
                               f"{len(self._row_of)} live)")
        for slot, ids in zip(slots, prompts):
            if not 0 < len(ids) <= self.max_length:
                raise ValueError(f"a prompt of {len(ids)} tokens: 1 to max_length {self.max_length} are possible")
        out = [None] * len(slots)
        order = sorted(range(len(slots)), key=lambda i: len(prompts[i]))  # similar lengths pad together
        per_call = max((b for b, _ in self._prefill_graphs), default=8)  # the largest graph's rows
        with self.torch.inference_mode():
            for start in range(0, len(order), per_call):
                picked = order[start:start + per_call]
                logits = self._prefill_chunk([slots[i] for i in picked], [prompts[i] for i in picked])
                for i, row in zip(picked, logits):
                    out[i] = row
        return np.stack(out)

    def _prefill_chunk(self, slots: list[int], prompts: list[Sequence[int]]) -> np.ndarray:
        torch = self.torch
        row0, k, longest = len(self._row_of), len(slots), max(len(p) for p in prompts)
        bucket = min(((b, s) for b, s in self._prefill_graphs if b >= k and s >= longest), default=None,
                     key=lambda bs: (bs[1], bs[0]))
        b, s = bucket or (k, longest)
        io = np.ones((b, s + 1), np.int64)  # padding: token 1, length 1 (extra rows: ignored)
        for r, ids in enumerate(prompts):
            io[r, :len(ids)], io[r, s] = ids, len(ids)
        for r, slot in enumerate(slots):
            self._row_of[slot], self._length[slot] = row0 + r, len(prompts[r])
        if bucket is None:
            io_dev = torch.from_numpy(io).to(self.device)
            logits = self._prefill_rows(self.k_cache[:, row0:row0 + k], self.v_cache[:, row0:row0 + k],
                                        io_dev[:, :s], io_dev[:, s])
        else:
            graph, static_io, logits = self._prefill_graphs[bucket]
            static_io.copy_(torch.from_numpy(io))
            graph.replay()
            self.k_cache[:, row0:row0 + k, :, :s].copy_(self._prefill_k[:, :k, :, :s])
            self.v_cache[:, row0:row0 + k, :, :s].copy_(self._prefill_v[:, :k, :, :s])
        return np.array(logits[:k].float().cpu())  # a copy: the graph's output is reused by the next replay

    def _step(self, slots: Sequence[int], tokens: Sequence[int]):
        """One decode step of all live rows: (logits [n, V] and their argmax [n] on the device, by
        cache row; each slot's row)."""
        torch = self.torch
        n = len(slots)
        if n != len(self._row_of):
            raise ValueError(f"a decode step must cover all {len(self._row_of)} live sequences, got {n}")
        graph_b = next((b for b in sorted(self._graphs) if b >= n), None)
        io = np.zeros((2, graph_b or n), np.int64)  # rows n.. of a graph's batch: zeros (ignored)
        rows = [self._row_of[slot] for slot in slots]
        for slot, token, r in zip(slots, tokens, rows):
            io[0, r], io[1, r] = token, self._length[slot]
            if io[1, r] >= self.max_length:
                raise ValueError(f"sequence in slot {slot} reached max_length {self.max_length}")
        if graph_b is None:
            io_dev = torch.from_numpy(io).to(self.device)
            logits = self._decode_rows(io_dev[0], io_dev[1])
            best = logits.argmax(-1)
        else:
            graph, static_io, static_logits, static_best = self._graphs[graph_b]
            static_io.copy_(torch.from_numpy(io))
            graph.replay()
            logits, best = static_logits[:n], static_best[:n]
        for slot in slots:
            self._length[slot] += 1
        return logits, best, rows

    def decode(self, slots: Sequence[int], tokens: Sequence[int]) -> np.ndarray:
        with self.torch.inference_mode():
            logits, _, rows = self._step(slots, tokens)
            return logits.float().cpu().numpy()[rows]

    def decode_step(self, slots: Sequence[int], tokens: Sequence[int],
                    want_logits: Sequence[bool]) -> tuple[np.ndarray, np.ndarray]:
        """Greedy rows cost the device-to-host copy of one token id each; only the rows in
        ``want_logits`` bring their logits back."""
        torch = self.torch
        with torch.inference_mode():
            logits, best, rows = self._step(slots, tokens)
            wanted = [r for r, w in zip(rows, want_logits) if w]
            host_logits = (logits[torch.tensor(wanted, device=self.device)].float().cpu().numpy() if wanted
                           else np.zeros((0, logits.shape[-1]), np.float32))
            return best.cpu().numpy()[rows], host_logits

    def release(self, slot: int) -> None:
        row = self._row_of.pop(slot, None)
        self._length.pop(slot, None)
        if row is None:
            return
        last = len(self._row_of)  # rows are 0..last after the pop
        if row != last:
            moved = next(s for s, r in self._row_of.items() if r == last)
            self.k_cache[:, row].copy_(self.k_cache[:, last])
            self.v_cache[:, row].copy_(self.v_cache[:, last])
            self._row_of[moved] = row


def prefill_buckets(max_batch: int, max_prompt: int, max_length: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The prompt batches captured as CUDA graphs: rows 1, 2, 4, 8 (up to ``max_batch``) x padded
    lengths 16, 32, 64, ... up to the first that holds ``max_prompt`` tokens (at most ``max_length``)."""
    rows = tuple(b for b in (1, 2, 4, 8) if b <= max_batch)
    lengths, s = [], 16
    while True:
        lengths.append(min(s, max_length))
        if s >= min(max_prompt, max_length):
            return rows, tuple(lengths)
        s *= 2
