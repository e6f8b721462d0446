"""Request size limits, checked on the raw TEXT tensor before any decoding or tokenization.

The tokenizer truncates every text to the model's max sequence length, so a huge text costs
nothing in the encoder; it costs memory and CPU in decoding and tokenizing, which is what these
limits bound. A request over a limit fails alone, with INVALID_ARG and a message that names the
limit and the size; the other requests of the same execution are answered.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .tokenize import InvalidTextError

__all__ = ["RequestLimits", "RequestTooLargeError"]


class RequestTooLargeError(InvalidTextError):
    """A request holds more texts or more bytes of text than the deployment accepts."""


@dataclass(frozen=True)
class RequestLimits:
    """``max_text_bytes``: bytes of TEXT summed over one request's texts; ``max_texts``: texts in
    one request. ``0`` disables a limit. The tokenizer model takes them from its
    :class:`~trtserve_backend.parameters.TokenizerParameters`."""

    max_text_bytes: int = 0
    max_texts: int = 0

    def check(self, tensor: np.ndarray, input_name: str = "TEXT") -> None:
        """Raise :class:`RequestTooLargeError` if ``tensor`` (a request's BYTES input) is over a
        limit. Only lengths are read: nothing is decoded or copied."""
        items = tensor.reshape(-1)
        if self.max_texts and items.size > self.max_texts:
            raise RequestTooLargeError(
                f"{input_name}: {items.size} texts in one request, the limit is {self.max_texts}; "
                "split the request"
            )
        if self.max_text_bytes:
            total = 0
            for item in items:
                total += len(item)
                if total > self.max_text_bytes:
                    raise RequestTooLargeError(
                        f"{input_name}: request text is over the limit of {self.max_text_bytes} bytes "
                        f"({_total_bytes(items)} bytes in {items.size} text(s)); send less text per request"
                    )


def _total_bytes(items: np.ndarray) -> int:
    return sum(len(item) for item in items)
