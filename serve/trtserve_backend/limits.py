"""Request size limits, checked on the raw text tensors (TEXT; QUESTION and CONTEXT for question
answering) before any decoding or tokenization.

The tokenizer truncates every text to the model's max sequence length, so a huge text costs
nothing in the encoder; it costs memory and CPU in decoding and tokenizing, which is what these
limits bound. A request over a limit fails alone, with INVALID_ARG and a message that names the
limit and the size; the other requests of the same execution are answered.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np

from .tokenize import InvalidTextError

__all__ = ["RequestLimits", "RequestTooLargeError"]


class RequestTooLargeError(InvalidTextError):
    """A request holds more texts or more bytes of text than the deployment accepts."""


@dataclass(frozen=True)
class RequestLimits:
    """``max_text_bytes``: bytes of text summed over one request's texts (over all its text
    inputs: a question-answering request's QUESTION and CONTEXT together); ``max_texts``: texts
    (items) in one request. ``0`` disables a limit. The tokenizer model takes them from its
    :class:`~trtserve_backend.parameters.TokenizerParameters`."""

    max_text_bytes: int = 0
    max_texts: int = 0

    def check(self, tensor: np.ndarray, input_name: str = "TEXT") -> None:
        """Raise :class:`RequestTooLargeError` if ``tensor`` (a request's BYTES input) is over a
        limit. Only lengths are read: nothing is decoded or copied."""
        self.check_inputs({input_name: tensor})

    def check_inputs(self, tensors: Mapping[str, np.ndarray]) -> None:
        """:meth:`check` for a request's text inputs {name: BYTES tensor}: texts are counted per
        input, bytes summed over all of them."""
        total = count = 0
        for name, tensor in tensors.items():
            if self.max_texts and tensor.size > self.max_texts:
                raise RequestTooLargeError(
                    f"{name}: {tensor.size} texts in one request, the limit is {self.max_texts}; "
                    "split the request"
                )
            if self.max_text_bytes:
                # every length, no early stop: len() per item is far cheaper than the decoding that follows
                total += _total_bytes(tensor)
            count = max(count, tensor.size)
        if self.max_text_bytes and total > self.max_text_bytes:
            raise RequestTooLargeError(
                f"{' + '.join(tensors)}: request text is over the limit of {self.max_text_bytes} bytes "
                f"({total} bytes in {count} text(s)); send less text per request"
            )


def _total_bytes(tensor: np.ndarray) -> int:
    return sum(map(len, tensor.reshape(-1).tolist()))
