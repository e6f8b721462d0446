"""Windowed tokenization (the ``<name>_tokenizer`` of question answering and token classification).

A context (QA) or text (NER) longer than the model's max length is split into overlapping
windows by the fast tokenizer's overflow, exactly as the Hugging Face pipelines split it:

- QA: ``[CLS] question [SEP] context-window [SEP]``, the context truncated ``only_second`` with
  ``doc_stride`` tokens of overlap (``QuestionAnsweringPipeline.preprocess`` on a fast
  tokenizer). The question stays whole, as the pipeline keeps it on a fast tokenizer (its
  ``max_question_len`` acts on slow tokenizers only), unless the pipeline could not window it:
  a question that leaves no more than ``doc_stride`` context tokens per window (where the
  pipeline's tokenizer raises) is cut to its first ``max_question_length`` tokens (as text, at
  the end of the last kept token) instead of being rejected.
- NER: ``[CLS] text-window [SEP]`` with ``stride`` tokens of overlap
  (``TokenClassificationPipeline`` with ``stride``); ``stride = 0`` keeps only the first window,
  as the pipeline does without ``stride``.

Every window of every item is one row of the encoder batch, so the windows of concurrent
requests batch together. A request of n items becomes k >= n rows, padded to one length bucket;
beside the encoder inputs each row carries what the postprocess needs to score and regroup it
(names in :mod:`.contract`): ``token_spans`` (the character span of each token that may be part
of an answer or entity, else -1), ``window_item`` (the item the row belongs to) and
``item_text`` (the item's text on its first row only).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Union

import numpy as np

import trtserve_contract as contract
from .tokenize import InvalidTextError, choose_bucket

QAItem = tuple[str, str]  # (question, context)
Item = Union[str, QAItem]
NO_SPAN = -1   # a token that can be no part of an answer or entity
PAD_SPAN = -2  # padding after the window's last token


class TooManyWindowsError(InvalidTextError):
    """A request needs more windows (engine rows) than one encoder batch holds."""


@dataclass(frozen=True)
class WindowSettings:
    max_length: int
    #: Overlap between consecutive windows, in tokens (QA: ``doc_stride``; NER: ``stride``).
    stride: int
    buckets: tuple[int, ...]
    pad_token_id: int
    #: Windows one request may need at most: the encoder's max batch size.
    max_windows: int
    #: QA only: a question the pipeline could not window is cut to this many tokens.
    max_question_length: int = 64
    #: QA only: answers extend to whole words (the pipeline's ``align_to_words``, default on).
    align_to_words: bool = True

    def check(self, task: str) -> None:
        if self.buckets[-1] != self.max_length:
            raise ValueError(f"last length bucket {self.buckets[-1]} != max_length {self.max_length}")
        if task == contract.QUESTION_ANSWERING:
            room = self.max_length - self.max_question_length - 3  # [CLS] q [SEP] c [SEP]
            if not 0 < self.stride < room:
                raise ValueError(f"doc_stride {self.stride} must lie in (0, {room}): max_length {self.max_length} - "
                                 f"max_question_length {self.max_question_length} - 3 special tokens")
        elif task == contract.TOKEN_CLASSIFICATION:
            if not 0 <= self.stride < self.max_length - 2:
                raise ValueError(f"stride {self.stride} must lie in [0, {self.max_length - 2})")
        else:
            raise ValueError(f"no windowed tokenization for task {task!r}")
        if self.max_windows < 1:
            raise ValueError(f"max_windows must be >= 1, got {self.max_windows}")


def _context_spans(seq: np.ndarray, words: np.ndarray, offsets: np.ndarray, sequence: int,
                   align_to_words: bool) -> np.ndarray:
    """[length, 2] char spans of the tokens of ``sequence`` (whole words if ``align_to_words``), else -1.

    A word's span is that of its first and last token *in this window* (``Encoding.word_to_chars``
    sees only the window's tokens), so a word cut by the window edge maps to its visible part.
    """
    spans = np.full((len(seq), 2), NO_SPAN, dtype=np.int32)
    inside = seq == sequence
    if not inside.any():
        return spans
    if not align_to_words:
        spans[inside] = offsets[inside]
        return spans
    idx = np.flatnonzero(inside)
    w = words[idx]
    # a run = consecutive tokens of one word (tokens of a word are contiguous)
    new_run = np.ones(len(idx), dtype=bool)
    new_run[1:] = (w[1:] != w[:-1]) | (idx[1:] != idx[:-1] + 1)
    run = np.cumsum(new_run) - 1
    firsts = idx[new_run]
    lasts = np.append(idx[np.flatnonzero(new_run)[1:] - 1], idx[-1])
    spans[idx, 0] = offsets[firsts[run], 0]
    spans[idx, 1] = offsets[lasts[run], 1]
    return spans


class WindowTokenizer:
    """Items -> engine rows (windows) + per-token spans, for one windowed task."""

    def __init__(self, tokenizer, task: str, settings: WindowSettings, cls_token_id: int | None = None):
        settings.check(task)
        self.task = task
        self.settings = settings
        self.tokenizer = tokenizer
        tokenizer.no_padding()
        if task == contract.QUESTION_ANSWERING:
            from tokenizers import Tokenizer

            # questions are measured without truncation (the pair tokenizer truncates only_second)
            self.question_tokenizer = Tokenizer.from_str(tokenizer.to_str())
            self.question_tokenizer.no_truncation()
            self.question_tokenizer.no_padding()
            tokenizer.enable_truncation(settings.max_length, stride=settings.stride, strategy="only_second",
                                        direction="right")
        else:
            tokenizer.enable_truncation(settings.max_length, stride=settings.stride, strategy="longest_first",
                                        direction="right")
        self.cls_token_id = cls_token_id

    @classmethod
    def from_file(cls, path: str, task: str, settings: WindowSettings) -> "WindowTokenizer":
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(path)
        cls_id = tok.token_to_id("[CLS]")
        return cls(tok, task, settings, cls_token_id=cls_id)

    # ---- encoding -------------------------------------------------------------------

    def encode_requests(self, requests: Sequence[Sequence[Item]]) -> list[dict[str, np.ndarray] | InvalidTextError]:
        """Each request's rows, or the error that names what is wrong with that request.

        All items of all requests are tokenized in one call to the Rust tokenizer.
        """
        checked: list[list[Item] | InvalidTextError] = []
        for items in requests:
            try:
                checked.append(self._checked_items(items))
            except InvalidTextError as e:
                checked.append(e)
        flat = [item for items in checked if not isinstance(items, InvalidTextError) for item in items]
        windows = self._windows(flat)
        results: list[dict[str, np.ndarray] | InvalidTextError] = []
        start = 0
        for items in checked:
            if isinstance(items, InvalidTextError):
                results.append(items)
                continue
            per_item = windows[start:start + len(items)]
            start += len(items)
            try:
                results.append(self._rows(items, per_item))
            except InvalidTextError as e:
                results.append(e)
        return results

    def _checked_items(self, items: Sequence[Item]) -> list[Item]:
        if self.task != contract.QUESTION_ANSWERING:
            return list(items)
        for i, (question, context) in enumerate(items):
            if not question:
                raise InvalidTextError(f"{contract.QUESTION}[{i}] is empty")
            if not context:
                raise InvalidTextError(f"{contract.CONTEXT}[{i}] is empty")
        return list(items)

    def pipeline_keeps_whole(self, question: str, context: str) -> bool:
        """Whether the pipeline windows ``context`` after the whole ``question``: the pair fits in
        ``max_length`` tokens, or the question (with the special tokens) leaves more than
        ``stride`` tokens of context per window (else the fast tokenizer's truncation raises)."""
        pair = self.question_tokenizer.encode(question, context)
        fixed = sum(1 for k in pair.sequence_ids if k != 1)  # question and special tokens
        return len(pair.ids) <= self.settings.max_length or self.settings.max_length - fixed > self.settings.stride

    def truncate_questions(self, questions: Sequence[str], contexts: Sequence[str]) -> list[str]:
        """The questions as the encoder sees them: whole where :meth:`pipeline_keeps_whole`, else cut
        to their first ``max_question_length`` tokens (as text)."""
        limit = self.settings.max_question_length
        out = list(questions)
        encodings = self.question_tokenizer.encode_batch(out, add_special_tokens=False)
        cut = [i for i, e in enumerate(encodings)
               if len(e.ids) > limit and not self.pipeline_keeps_whole(out[i], contexts[i])]
        for _ in range(3):  # re-tokenizing a cut text can, rarely, add a token at the cut
            if not cut:
                return out
            for i in cut:
                out[i] = out[i][:encodings[i].offsets[limit - 1][1]]
            encodings = self.question_tokenizer.encode_batch(out, add_special_tokens=False)
            cut = [i for i in cut if len(encodings[i].ids) > limit]
        raise InvalidTextError(f"{contract.QUESTION} could not be cut to {limit} tokens")

    def _windows(self, items: Sequence[Item]) -> list[list]:
        """The encodings (windows) of each item, first window first."""
        if not items:
            return []
        if self.task == contract.QUESTION_ANSWERING:
            questions = self.truncate_questions([q for q, _ in items], [c for _, c in items])
            encodings = self.tokenizer.encode_batch(list(zip(questions, [c for _, c in items])))
            return [[e, *e.overflowing] for e in encodings]
        encodings = self.tokenizer.encode_batch(list(items))
        if self.settings.stride == 0:  # the pipeline without ``stride`` keeps the first window only
            return [[e] for e in encodings]
        return [[e, *e.overflowing] for e in encodings]

    def _spans(self, enc) -> np.ndarray:
        offsets = np.asarray(enc.offsets, dtype=np.int32).reshape(-1, 2)
        if self.task == contract.QUESTION_ANSWERING:
            seq = np.array([-1 if s is None else s for s in enc.sequence_ids], dtype=np.int32)
            words = np.array([-1 if w is None else w for w in enc.word_ids], dtype=np.int32)
            spans = _context_spans(seq, words, offsets, 1, self.settings.align_to_words)
            # [CLS] stays a candidate (the pipeline's p_mask keeps it: the null answer)
            if self.cls_token_id is not None:
                cls = np.asarray(enc.ids) == self.cls_token_id
                spans[cls] = offsets[cls]
            return spans
        special = np.asarray(enc.special_tokens_mask, dtype=bool)
        spans = offsets.copy()
        spans[special] = NO_SPAN
        return spans

    def _rows(self, items: Sequence[Item], windows: Sequence[list]) -> dict[str, np.ndarray]:
        k = sum(len(w) for w in windows)
        s = self.settings
        if k > s.max_windows:
            what = contract.CONTEXT if self.task == contract.QUESTION_ANSWERING else contract.TEXT
            sizes = [len(w) for w in windows]
            raise TooManyWindowsError(
                f"{what}: the request needs {k} windows of {s.max_length} tokens (stride {s.stride}; per item {sizes}), "
                f"at most {s.max_windows} fit one request; send long texts in separate requests")
        flat = [e for w in windows for e in w]
        width = choose_bucket(max((len(e.ids) for e in flat), default=1), s.buckets)
        ids = np.full((k, width), s.pad_token_id, dtype=np.int64)
        mask = np.zeros((k, width), dtype=np.int64)
        types = np.zeros((k, width), dtype=np.int64)
        spans = np.full((k, width, 2), PAD_SPAN, dtype=np.int32)
        item_of_row = np.zeros((k, 1), dtype=np.int32)
        texts = np.empty((k, 1), dtype=np.object_)
        texts[:] = b""
        row = 0
        for i, (item, encs) in enumerate(zip(items, windows)):
            texts[row, 0] = (item[1] if self.task == contract.QUESTION_ANSWERING else item).encode("utf-8")
            for e in encs:
                n = len(e.ids)
                ids[row, :n] = e.ids
                mask[row, :n] = e.attention_mask
                types[row, :n] = e.type_ids
                spans[row, :n] = self._spans(e)
                item_of_row[row, 0] = i
                row += 1
        return {
            contract.INPUT_IDS: ids, contract.ATTENTION_MASK: mask, contract.TOKEN_TYPE_IDS: types,
            contract.TOKEN_SPANS: spans, contract.WINDOW_ITEM: item_of_row, contract.ITEM_TEXT: texts,
        }


def window_lengths(spans: np.ndarray) -> np.ndarray:
    """[k] tokens per window without its padding."""
    return (spans[:, :, 0] != PAD_SPAN).sum(axis=1)


def split_windows(item_of_row: np.ndarray) -> list[np.ndarray]:
    """Row indices of each item, in item order (rows arrive grouped, items ascending)."""
    items = item_of_row.reshape(-1)
    if len(items) == 0:
        return []
    bounds = np.flatnonzero(np.diff(items)) + 1
    return np.split(np.arange(len(items)), bounds)


def utf8_column(values: Sequence[str]) -> np.ndarray:
    """[n, 1] BYTES (object) array of UTF-8 encoded strings: a string output of the ensemble."""
    out = np.empty((len(values), 1), dtype=np.object_)
    for i, v in enumerate(values):
        out[i, 0] = v.encode("utf-8")
    return out


def item_texts(texts: np.ndarray, item_of_row: np.ndarray) -> list[str]:
    """Each item's text, taken from its first row."""
    out = []
    for rows in split_windows(item_of_row):
        raw = texts.reshape(-1)[rows[0]]
        out.append(raw.decode("utf-8") if isinstance(raw, (bytes, np.bytes_)) else str(raw))
    return out
