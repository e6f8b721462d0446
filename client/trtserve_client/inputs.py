"""Turning user texts into request tensors: validation, UTF-8 encoding and batch splitting.

Pure functions, no network: the client calls them before sending anything, and tests call
them directly.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TypeVar, Union

import numpy as np

from .errors import BadInputError

__all__ = ["Texts", "encode_texts", "split_batches", "text_tensor"]

T = TypeVar("T")

# What the public methods accept: one text, or any iterable of texts. ``bytes`` items are sent
# unchanged (so a test can send invalid UTF-8 on purpose); ``str`` items are UTF-8 encoded.
Texts = Union[str, bytes, Iterable[Union[str, bytes]]]


def encode_texts(texts: Texts) -> list[bytes]:
    """Validate ``texts`` and return one UTF-8 ``bytes`` per text, in order.

    A single ``str`` or ``bytes`` is one text (not a sequence of characters). Raises
    :class:`BadInputError`, naming the offending index, for items that are neither ``str``
    nor ``bytes`` and for strings that cannot be UTF-8 encoded (lone surrogates).
    """
    if isinstance(texts, (str, bytes)):
        texts = [texts]
    elif not isinstance(texts, Iterable):
        raise BadInputError(
            f"texts must be a str or an iterable of str, got {type(texts).__name__}"
        )
    encoded: list[bytes] = []
    for index, text in enumerate(texts):
        if isinstance(text, str):
            try:
                encoded.append(text.encode("utf-8"))
            except UnicodeEncodeError as e:
                raise BadInputError(f"texts[{index}] cannot be encoded as UTF-8: {e}") from e
        elif isinstance(text, (bytes, bytearray, memoryview)):
            encoded.append(bytes(text))
        else:
            raise BadInputError(
                f"texts[{index}] is {type(text).__name__} ({text!r:.40}), expected str or bytes"
            )
    return encoded


def split_batches(items: Sequence[T], max_batch_size: int) -> list[Sequence[T]]:
    """Split ``items`` into consecutive chunks of at most ``max_batch_size``, order preserved.

    ``split_batches(range(130), 64)`` -> chunks of 64, 64, 2. An empty sequence gives no
    chunks. Concatenating the chunks gives ``items`` back.
    """
    if isinstance(max_batch_size, bool) or not isinstance(max_batch_size, (int, np.integer)):
        raise ValueError(f"max_batch_size must be an int, got {max_batch_size!r}")
    if max_batch_size < 1:
        raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
    return [items[start:start + max_batch_size] for start in range(0, len(items), max_batch_size)]


def text_tensor(encoded: Sequence[bytes], *, batched: bool = True) -> np.ndarray:
    """The ``TEXT`` request tensor: an object array of ``bytes``.

    Shape ``[n, 1]`` for a model with ``max_batch_size > 0`` (dims ``[1]`` plus the batch
    axis); shape ``[1]`` for a non-batching model, which takes exactly one text per request.
    """
    if not batched:
        if len(encoded) != 1:
            raise ValueError(f"a non-batching model takes one text per request, got {len(encoded)}")
        tensor = np.empty((1,), dtype=np.object_)
        tensor[0] = encoded[0]
        return tensor
    tensor = np.empty((len(encoded), 1), dtype=np.object_)
    for row, text in enumerate(encoded):
        tensor[row, 0] = text
    return tensor
