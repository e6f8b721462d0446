"""The outbox thread (generation.outbox): pieces of a lagging stream are joined, the final
response stays last, cancellation and failed sends reach the scheduler without a round trip
from the engine thread; ResponseSink asks the server about cancellation once per check."""
from __future__ import annotations

import threading
import time

import numpy as np

import trtserve_contract as contract
from trtserve_backend.generation.outbox import Outbox
from trtserve_backend.generation.requests import GenerationRequest
from trtserve_backend.generation.scheduler import SchedulerStats, StepScheduler
from trtserve_backend.generation.text import TokenBytes


class SlowSink:
    """A client whose sends block until ``gate`` opens; records what arrives, in order."""

    def __init__(self, gate=None, fail_on_send=False):
        self.gate = gate
        self.fail_on_send = fail_on_send
        self.events = []
        self.polls = 0
        self.is_gone = False

    def send(self, text):
        if self.gate is not None:
            self.gate.wait(10)
        if self.fail_on_send:
            raise RuntimeError("stream closed")
        self.events.append(("send", text))

    def finish(self, text, reason, tokens):
        self.events.append(("finish", text, reason, tokens))

    def fail(self, message, *code):
        self.events.append(("fail", message, *code))

    def cancelled(self):
        self.polls += 1
        return self.is_gone


def _wait(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.002)


def test_pieces_of_a_lagging_stream_are_joined_and_the_final_stays_last():
    gate = threading.Event()
    inner = SlowSink(gate)
    outbox = Outbox(cancel_poll_s=10).start()
    sink = outbox.sink(inner)
    sink.send("Hel")  # the outbox thread takes it and blocks in the client's send
    _wait(lambda: not outbox._pending)
    for piece in ("lo", ", w", "ör"):
        sink.send(piece)
    sink.finish("ld", "length", 6)
    gate.set()
    outbox.stop()
    assert inner.events == [("send", "Hel"), ("finish", "lo, wörld", "length", 6)]
    assert outbox.joined == 3 and outbox.sent == 2


def test_a_stream_that_keeps_up_gets_one_response_per_piece():
    inner = SlowSink()
    outbox = Outbox(cancel_poll_s=10).start()
    sink = outbox.sink(inner)
    for piece in ("a", "b", "c"):
        sink.send(piece)
        _wait(lambda: not outbox._pending)
    sink.finish("", "eos", 4)
    outbox.stop()
    assert inner.events == [("send", "a"), ("send", "b"), ("send", "c"), ("finish", "", "eos", 4)]
    assert outbox.joined == 0


def test_failures_are_delivered_after_the_pieces_before_them():
    inner = SlowSink()
    outbox = Outbox(cancel_poll_s=10)
    sink = outbox.sink(inner)
    sink.send("x")
    sink.fail("the model is shutting down", "UNAVAILABLE")
    outbox.start().stop()
    assert inner.events == [("send", "x"), ("fail", "the model is shutting down", "UNAVAILABLE")]


def test_cancellation_is_polled_by_the_outbox_not_per_step():
    inner = SlowSink()
    outbox = Outbox(cancel_poll_s=0.01).start()
    sink = outbox.sink(inner)
    assert not sink.cancelled()
    polls = inner.polls
    for _ in range(1000):  # the engine thread's checks cost no question to the server
        sink.cancelled()
    assert inner.polls - polls < 50
    inner.is_gone = True
    _wait(sink.cancelled)
    assert sink.why == "its client cancelled the request"
    polls = inner.polls
    time.sleep(0.05)
    assert inner.polls == polls  # a gone stream is not asked again
    outbox.stop()


class _StubExecutor:
    """Logits that always choose token 0 (a one-byte token in GPT-2's table: '!')."""

    max_batch = 4

    def prefill_batch(self, slots, prompts):
        return np.eye(8, dtype=np.float32)[[0] * len(slots)]

    def decode_step(self, slots, tokens, want):
        return np.zeros(len(slots), np.int64), np.zeros((sum(want), 8), np.float32)

    def release(self, slot):
        pass


def test_a_failed_send_frees_the_sequence_at_the_next_step():
    table = TokenBytes([b"!"] * 8)
    notes = []
    outbox = Outbox(cancel_poll_s=10).start()
    scheduler = StepScheduler(_StubExecutor(), table, eos_id=7, max_sequences=4, note=notes.append, outbox=outbox)
    broken, fine = SlowSink(fail_on_send=True), SlowSink()
    scheduler.submit(GenerationRequest([1, 2], 50), broken)
    scheduler.submit(GenerationRequest([1, 2], 3), fine)
    scheduler.step()
    _wait(lambda: scheduler._active[0].sink.cancelled())  # the outbox saw the send fail
    scheduler.step()
    scheduler.step()
    outbox.stop()
    assert scheduler.stats.cancelled == 1 and scheduler.pending() == 0
    assert any("its stream failed (stream closed)" in n for n in notes)
    assert fine.events[-1][0] == "finish" and fine.events[-1][2:] == (contract.FINISH_LENGTH, 3)
    assert "".join(e[1] for e in fine.events) == "!!!"  # (pieces may have been joined)


def test_stats_summary_names_the_phases():
    stats = SchedulerStats(prefills=2, decode_calls=4, decode_rows=10, max_rows=3)
    stats.seconds.update(decode=0.5, advance=0.25)
    line = stats.summary()
    assert "rows/call=2.5" in line and "decode=0.500s" in line and "advance=0.250s" in line


def test_response_sink_asks_about_cancellation_once_per_check():
    from trtserve_backend.generation.responses import ResponseSink

    asked = []

    class Sender:
        def is_cancelled(self):
            asked.append("sender")
            return False

    class Request:
        def get_response_sender(self):
            return Sender()

        def is_cancelled(self):
            asked.append("request")
            return True

    sink = ResponseSink(object(), Request(), {})
    assert sink.cancelled() is False and asked == ["sender"]
