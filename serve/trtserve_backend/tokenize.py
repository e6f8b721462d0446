"""Batch tokenization with length buckets (the logic behind ``<name>_tokenizer``).

All texts of all requests in one Triton execution are encoded in one call to the Rust
tokenizer. Each request is then padded to the smallest configured length bucket that holds
its longest text, so requests of similar length get identical shapes and the encoder's
dynamic batcher can merge them.
"""
from __future__ import annotations

import bisect
import itertools
import os
from dataclasses import dataclass
from typing import Sequence

import numpy as np

import trtserve_contract as contract


class InvalidTextError(ValueError):
    """A request's TEXT tensor cannot be tokenized; the message names the problem."""


def decode_texts(tensor: np.ndarray, input_name: str = contract.TEXT) -> list[str]:
    """Flatten a [batch, 1] BYTES tensor into Python strings; reject invalid UTF-8 clearly."""
    items = tensor.reshape(-1).tolist()
    try:  # what Triton hands a model: bytes items, valid UTF-8 (one call per item, nothing checked twice)
        return [item.decode("utf-8") for item in items]
    except (AttributeError, UnicodeDecodeError):
        pass  # str items, other types or invalid UTF-8: item by item, naming what is wrong
    texts = []
    for i, item in enumerate(items):
        if isinstance(item, str):
            texts.append(item)
            continue
        if not isinstance(item, (bytes, bytearray, np.bytes_)):
            raise InvalidTextError(f"{input_name}[{i}]: expected UTF-8 bytes, got {type(item).__name__}")
        try:
            texts.append(bytes(item).decode("utf-8"))
        except UnicodeDecodeError as e:
            raise InvalidTextError(
                f"{input_name}[{i}] is not valid UTF-8: byte 0x{bytes(item)[e.start]:02x} at offset {e.start}"
            ) from None
    return texts


def choose_bucket(length: int, buckets: Sequence[int]) -> int:
    """The smallest bucket >= length (lengths beyond the last bucket were truncated already)."""
    i = bisect.bisect_left(buckets, length)
    return buckets[min(i, len(buckets) - 1)]


@dataclass
class BucketTokenizer:
    """A Hugging Face fast tokenizer that truncates to ``max_length`` and pads to buckets."""

    tokenizer: "object"  # tokenizers.Tokenizer
    max_length: int
    buckets: tuple[int, ...]
    pad_token_id: int
    output_names: tuple[str, ...] = contract.ENCODER_INPUTS

    @classmethod
    def from_file(cls, path: str, max_length: int, buckets: Sequence[int], pad_token_id: int,
                  output_names: Sequence[str] = contract.ENCODER_INPUTS) -> "BucketTokenizer":
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(path)
        tok.no_padding()
        tok.enable_truncation(max_length=max_length)
        buckets = tuple(sorted(buckets))
        if buckets[-1] != max_length:
            raise ValueError(f"last length bucket {buckets[-1]} != max_length {max_length}")
        check_outputs(output_names)
        if tok.id_to_token(int(pad_token_id)) is None:
            raise ValueError(f"{path}: pad_token_id {pad_token_id} is not in the tokenizer's vocabulary "
                             f"({tok.get_vocab_size()} tokens)")
        return cls(tok, max_length, buckets, pad_token_id, tuple(output_names))

    @classmethod
    def from_parameters(cls, params, folder: str, output_names: Sequence[str]) -> "BucketTokenizer":
        """From a Python model's :class:`~.parameters.TokenizerParameters` and its version folder.

        ``tokenizer_threads`` (default 1): the fast tokenizer's Rayon pool in this process. Each
        model instance is its own process, and by default every one of them would start a pool of
        one thread per host core (8 instances x 16 threads on a 16-core host); one thread per
        instance lets the instance count decide the parallelism.
        """
        cls.set_threads(params.tokenizer_threads)
        return cls.from_file(os.path.join(folder, params.tokenizer_file), max_length=params.max_sequence_length,
                             buckets=params.length_buckets, pad_token_id=params.pad_token_id,
                             output_names=output_names)

    @staticmethod
    def set_threads(threads: int) -> None:
        """The fast tokenizers' Rayon pool in this process: ``threads`` (at least 1), before the
        first tokenizer is made (the pool starts once, sized from the environment)."""
        os.environ["RAYON_NUM_THREADS"] = str(max(threads, 1))
        os.environ["TOKENIZERS_PARALLELISM"] = "true" if threads > 1 else "false"

    def encode_requests(self, requests: Sequence[Sequence[str]]) -> list[dict[str, np.ndarray]]:
        """Encode every request's texts at once; return one dict of [n, bucket] int64 arrays per request.

        ``encode_batch_fast`` (tokenizers >= 0.20) skips the character offsets, which one row per
        text never reads (the windowed tasks' tokenizer, :mod:`.windows`, keeps them): the same ids
        and token types, ~10-30% less CPU per text (measured on review snippets)."""
        flat = [t for texts in requests for t in texts]
        encode = getattr(self.tokenizer, "encode_batch_fast", None) or self.tokenizer.encode_batch
        encodings = encode(flat, add_special_tokens=True) if flat else []
        results, start = [], 0
        for texts in requests:
            chunk = encodings[start:start + len(texts)]
            start += len(texts)
            results.append(self._pad(chunk))
        return results

    def encode(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        return self.encode_requests([texts])[0]

    def _pad(self, encodings) -> dict[str, np.ndarray]:
        n = len(encodings)
        rows = [e.ids for e in encodings]  # each .ids builds a new list: read it once
        lengths = np.fromiter(map(len, rows), dtype=np.int64, count=n)
        width = choose_bucket(int(lengths.max(initial=1)), self.buckets)
        total = int(lengths.sum())
        # Vectorized: the mask's True cells in row-major order are exactly the tokens in order.
        mask = np.arange(width)[None, :] < lengths[:, None]
        ids = np.full((n, width), self.pad_token_id, dtype=np.int64)
        ids[mask] = rows[0] if n == 1 else np.fromiter(itertools.chain.from_iterable(rows), dtype=np.int64, count=total)
        arrays = {contract.INPUT_IDS: ids, contract.ATTENTION_MASK: mask.astype(np.int64)}
        # Only encoders that take token types get them (RoBERTa, DistilBERT, XLM-R, MPNet and
        # DeBERTa-v3 do not); position ids are computed inside every encoder from input_ids.
        if contract.TOKEN_TYPE_IDS in self.output_names:
            types = np.zeros((n, width), dtype=np.int64)
            types[mask] = encodings[0].type_ids if n == 1 else np.fromiter(
                itertools.chain.from_iterable(e.type_ids for e in encodings), dtype=np.int64, count=total)
            arrays[contract.TOKEN_TYPE_IDS] = types
        return {name: arrays[name] for name in self.output_names}


def check_outputs(output_names: Sequence[str]) -> None:
    """The encoder inputs a config asks for must be ones this tokenizer makes, with ids and mask."""
    unknown = [n for n in output_names if n not in contract.ENCODER_INPUTS]
    if unknown:
        raise ValueError(f"the tokenizer cannot produce {unknown}; it sends a subset of "
                         f"{list(contract.ENCODER_INPUTS)} (position ids are computed inside the encoder)")
    for required in (contract.INPUT_IDS, contract.ATTENTION_MASK):
        if required not in output_names:
            raise ValueError(f"every encoder takes {required!r}; the configured outputs {list(output_names)} lack it")
