"""Step-level batching: every decoding sequence shares one engine call per decode step.

One thread owns the engine. Each iteration of its loop is a step boundary: sequences whose
client went away are dropped, waiting requests are admitted into free slots (their prompts run
together, as few engine calls as the engine's prompt batches allow, which yields their first
tokens), then one decode step runs all decoding sequences as one batch. A sequence that finishes leaves at once; the others do not wait for it, nor it for
them. The engine keeps each slot's KV cache between steps (:class:`DecoderExecutor`).

Greedy rows take the engine's own argmax (on the device for the torch engine: only the token ids
come back); only sampled rows bring their logits to the host. With an :class:`~.outbox.Outbox`
the pieces are delivered and cancellation is polled by the outbox's thread, so the engine thread
does no round trip to the server per token.
"""
from __future__ import annotations

import collections
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Protocol, Sequence

import numpy as np

import trtserve_contract as contract
from .outbox import Outbox
from .requests import CapacityError, GenerationRequest
from .sampling import Sampler
from .text import IncrementalDecoder, StopMatcher, TokenBytes

log = logging.getLogger(__name__)


class DecoderExecutor(Protocol):
    """An engine that keeps a KV cache per slot (0 .. max_batch-1) between calls."""

    max_batch: int

    def prefill_batch(self, slots: Sequence[int], prompts: Sequence[Sequence[int]]) -> np.ndarray:
        """Run each prompt into its slot's (new) cache; the logits [len(slots), vocab] of each
        prompt's last position."""

    def decode(self, slots: Sequence[int], tokens: Sequence[int]) -> np.ndarray:
        """Append one token to each slot's cache in one batched call; logits [len(slots), vocab]."""

    def decode_step(self, slots: Sequence[int], tokens: Sequence[int],
                    want_logits: Sequence[bool]) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`decode`, returning each row's argmax [len(slots)] (ties: the lowest id) and the
        logits [k, vocab] of only the k rows with ``want_logits``."""

    def release(self, slot: int) -> None:
        """Forget ``slot``'s cache."""


class StreamSink(Protocol):
    """Where one request's pieces go (a Triton response sender, or a list in tests)."""

    def send(self, text: str) -> None: ...

    def finish(self, text: str, reason: str, tokens: int) -> None: ...

    def fail(self, message: str) -> None: ...

    def cancelled(self) -> bool: ...


@dataclass
class _Sequence:
    request: GenerationRequest
    sink: StreamSink
    decoder: IncrementalDecoder
    stops: StopMatcher
    sampler: Sampler
    slot: int = -1
    generated: int = 0
    next_token: int = -1


@dataclass
class SchedulerStats:
    """Counts that show batching at work (and that the tests check)."""

    prefills: int = 0
    prefill_calls: int = 0
    decode_calls: int = 0
    decode_rows: int = 0
    max_rows: int = 0
    finished: dict = field(default_factory=lambda: collections.Counter())
    cancelled: int = 0
    #: seconds the engine thread spent per phase of its steps: "cancel" (checks), "admit"
    #: (prefills included), "decode" (engine calls), "advance" (sampling, text, queueing or sending)
    seconds: dict = field(default_factory=lambda: collections.Counter())

    def summary(self) -> str:
        rows = self.decode_rows / self.decode_calls if self.decode_calls else 0.0
        phases = " ".join(f"{k}={v:.3f}s" for k, v in sorted(self.seconds.items()))
        return (f"prefills={self.prefills} prefill_calls={self.prefill_calls} decode_calls={self.decode_calls} rows/call={rows:.1f} "
                f"max_rows={self.max_rows} cancelled={self.cancelled} {phases}")


class StepScheduler:
    def __init__(self, executor: DecoderExecutor, token_bytes: TokenBytes, eos_id: int, max_sequences: int,
                 note: Callable[[str], None] | None = None, outbox: Outbox | None = None):
        """``note`` receives one line per notable event (a client that went away), e.g. the server log.
        ``outbox``: deliver through its thread (started and stopped with the scheduler's)."""
        if max_sequences < 1:
            raise ValueError(f"max_sequences must be >= 1, got {max_sequences}")
        self.executor = executor
        self.token_bytes = token_bytes
        self.eos_id = eos_id
        self.max_sequences = max_sequences
        self.stats = SchedulerStats()
        self.note = note or log.info
        self.outbox = outbox
        self._waiting: collections.deque[_Sequence] = collections.deque()
        self._active: list[_Sequence] = []
        self._free_slots = list(range(executor.max_batch - 1, -1, -1))
        self._lock = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False

    # ---- called from Triton's execute thread ----------------------------------------------

    def submit(self, request: GenerationRequest, sink: StreamSink) -> None:
        """Queue a request for the next step boundary; CapacityError when the server is full."""
        with self._lock:
            held = len(self._waiting) + len(self._active)
            if held >= self.max_sequences:
                raise CapacityError(f"too many pending sequences: {held} held, the limit is max_sequences "
                                    f"{self.max_sequences}; try again later")
            if self.outbox is not None:
                sink = self.outbox.sink(sink)
            self._waiting.append(_Sequence(request, sink, IncrementalDecoder(self.token_bytes),
                                           StopMatcher(request.stops), Sampler(request.sampling)))
            self._lock.notify()

    def pending(self) -> int:
        with self._lock:
            return len(self._waiting) + len(self._active)

    # ---- the engine thread ----------------------------------------------------------------

    def start(self) -> "StepScheduler":
        if self.outbox is not None:
            self.outbox.start()
        self._thread = threading.Thread(target=self._run, name="trtserve-generate", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        with self._lock:
            self._stopping = True
            self._lock.notify()
        if self._thread is not None:
            self._thread.join(timeout_s)
        for seq in list(self._waiting) + self._active:
            _quietly(seq.sink.fail, "the model is shutting down")
        self._waiting.clear()
        self._active.clear()
        if self.outbox is not None:
            self.outbox.stop(timeout_s)

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._stopping and not self._waiting and not self._active:
                    self._lock.wait()
                if self._stopping:
                    return
            try:
                self.step()
            except Exception as e:  # noqa: BLE001 - the engine failed: fail its sequences, keep serving
                log.exception("generate step failed")
                for seq in list(self._active):
                    self._end(seq)
                    _quietly(seq.sink.fail, f"generation failed: {e}")

    def step(self) -> None:
        """One step boundary: drop cancelled, admit waiting, one batched decode step."""
        seconds = self.stats.seconds
        t0 = time.perf_counter()
        for seq in [s for s in self._active if s.sink.cancelled()]:
            self._drop(seq, getattr(seq.sink, "why", "") or "its client cancelled the request")
        t1 = time.perf_counter()
        self._admit()
        t2 = time.perf_counter()
        seconds["cancel"] += t1 - t0
        seconds["admit"] += t2 - t1
        if not self._active:
            return
        for start in range(0, len(self._active), self.executor.max_batch):
            t0 = time.perf_counter()
            group = self._active[start:start + self.executor.max_batch]
            sampled = [not s.sampler.greedy for s in group]
            best, logits = self.executor.decode_step([s.slot for s in group], [s.next_token for s in group], sampled)
            t1 = time.perf_counter()
            self.stats.decode_calls += 1
            self.stats.decode_rows += len(group)
            self.stats.max_rows = max(self.stats.max_rows, len(group))
            rows = iter(logits)
            for seq, token, wants in zip(group, best.tolist(), sampled):
                self._advance(seq, seq.sampler(next(rows)) if wants else token)
            seconds["decode"] += t1 - t0
            seconds["advance"] += time.perf_counter() - t1

    def _admit(self) -> None:
        """Every waiting sequence that has a free slot joins now, their prompts in one batch."""
        joining: list[_Sequence] = []
        with self._lock:
            while self._waiting and self._free_slots:
                seq = self._waiting.popleft()
                if seq.sink.cancelled():
                    self.stats.cancelled += 1
                    self.note("generate: dropped a waiting sequence: its client cancelled the request")
                    continue
                seq.slot = self._free_slots.pop()
                self._active.append(seq)
                joining.append(seq)
        if not joining:
            return
        logits = self.executor.prefill_batch([s.slot for s in joining], [s.request.prompt_ids for s in joining])
        self.stats.prefills += len(joining)
        self.stats.prefill_calls += 1
        for seq, row in zip(joining, logits):
            self._advance(seq, seq.sampler(row))

    def _advance(self, seq: _Sequence, token: int) -> None:
        """Take ``token`` as the next of ``seq``, stream its text, finish it when it is done."""
        seq.generated += 1
        seq.next_token = token
        if token == self.eos_id:
            return self._finish(seq, "", contract.FINISH_EOS)
        text, stopped = seq.stops.feed(seq.decoder.push(token))
        if stopped:
            return self._finish(seq, text, contract.FINISH_STOP)
        if seq.generated >= seq.request.max_new_tokens:
            return self._finish(seq, text, contract.FINISH_LENGTH)
        if text:
            try:
                seq.sink.send(text)
            except Exception as e:  # noqa: BLE001 - the client is gone: free the sequence
                self._drop(seq, f"its stream failed ({e})")

    def _finish(self, seq: _Sequence, text: str, reason: str) -> None:
        if reason != contract.FINISH_STOP:
            # what the decoder and the STOP matcher still hold belongs to the output
            tail, stopped = seq.stops.feed(seq.decoder.flush())
            text += tail if stopped else tail + seq.stops.flush()
        self._end(seq)
        self.stats.finished[reason] += 1
        _quietly(seq.sink.finish, text, reason, seq.generated)

    def _drop(self, seq: _Sequence, why: str) -> None:
        self.stats.cancelled += 1
        self._end(seq)
        self.note(f"generate: freed the sequence in slot {seq.slot} after {seq.generated} tokens: {why}")

    def _end(self, seq: _Sequence) -> None:
        with self._lock:
            if seq in self._active:
                self._active.remove(seq)
                self.executor.release(seq.slot)
                self._free_slots.append(seq.slot)


def _quietly(fn, *args) -> None:
    try:
        fn(*args)
    except Exception as e:  # noqa: BLE001 - a vanished client must not stop the engine thread
        log.info("could not deliver to a client: %s", e)
