"""Text in and out of a byte-level BPE model (GPT-2): prompt encoding, UTF-8-safe streaming, STOP.

GPT-2 tokens are byte strings, and one character of UTF-8 may be split over two tokens. The
:class:`IncrementalDecoder` therefore works on bytes: a piece is emitted only once its bytes
form valid UTF-8; bytes that can never become valid are replaced by U+FFFD exactly as the
Hugging Face tokenizer's ``decode`` does, so the concatenated pieces equal the decode of all
tokens. :class:`StopMatcher` holds back text that might be the start of a STOP string.
"""
from __future__ import annotations

import json
from functools import lru_cache
from typing import Sequence


@lru_cache(maxsize=1)
def _unicode_to_byte() -> dict[str, int]:
    """GPT-2's reversible byte <-> printable-character table (``bytes_to_unicode``), inverted."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    n = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(printable, chars)}


class TokenBytes:
    """Token id -> the bytes it stands for, read from a ``tokenizer.json`` (byte-level BPE)."""

    def __init__(self, table: Sequence[bytes]):
        self.table = list(table)

    @classmethod
    def from_tokenizer_json(cls, path: str) -> "TokenBytes":
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        vocab: dict[str, int] = dict(data["model"]["vocab"])
        special = {t["id"]: t["content"] for t in data.get("added_tokens", [])}
        size = max([*vocab.values(), *special.keys()]) + 1
        to_byte = _unicode_to_byte()
        table = [b""] * size
        for token, i in vocab.items():
            table[i] = bytes(to_byte[c] for c in token)
        for i, content in special.items():
            table[i] = content.encode("utf-8")
        return cls(table)

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, token_id: int) -> bytes:
        return self.table[token_id]

    def decode(self, ids: Sequence[int]) -> str:
        return b"".join(self.table[i] for i in ids).decode("utf-8", errors="replace")


class IncrementalDecoder:
    """Feed token ids one at a time; get back only text whose UTF-8 is complete."""

    def __init__(self, token_bytes: TokenBytes):
        self.token_bytes = token_bytes
        self.pending = b""

    def push(self, token_id: int) -> str:
        self.pending += self.token_bytes[token_id]
        out = []
        while self.pending:
            try:
                out.append(self.pending.decode("utf-8"))
                self.pending = b""
            except UnicodeDecodeError as e:
                if e.end == len(self.pending) and e.reason == "unexpected end of data":
                    # an incomplete character at the end: it may still be completed
                    out.append(self.pending[:e.start].decode("utf-8"))
                    self.pending = self.pending[e.start:]
                    break
                # bytes that can never be valid: U+FFFD, as the tokenizer's lossy decode does
                out.append(self.pending[:e.end].decode("utf-8", errors="replace"))
                self.pending = self.pending[e.end:]
        return "".join(out)

    def flush(self) -> str:
        """At the end of a sequence: what is left (an unfinished character becomes U+FFFD)."""
        text, self.pending = self.pending.decode("utf-8", errors="replace"), b""
        return text


class StopMatcher:
    """Finds STOP strings in streamed text; text that could begin one is held back until it cannot.

    The STOP string itself is not part of the output.
    """

    def __init__(self, stops: Sequence[str]):
        self.stops = tuple(s for s in stops if s)
        self.held = ""

    def feed(self, piece: str) -> tuple[str, bool]:
        """(text that is safe to emit, whether a STOP string ended the sequence)."""
        if not self.stops:
            return piece, False
        text = self.held + piece
        first = min(((i, s) for s in self.stops if (i := text.find(s)) >= 0), default=None)
        if first is not None:
            self.held = ""
            return text[: first[0]], True
        keep = self._longest_stop_prefix_suffix(text)
        self.held = text[len(text) - keep:] if keep else ""
        return text[: len(text) - keep], False

    def flush(self) -> str:
        text, self.held = self.held, ""
        return text

    def _longest_stop_prefix_suffix(self, text: str) -> int:
        best = 0
        for stop in self.stops:
            for k in range(min(len(stop) - 1, len(text)), best, -1):
                if text.endswith(stop[:k]):
                    best = k
                    break
        return best
