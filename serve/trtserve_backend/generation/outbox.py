"""One thread that talks to the clients, so the engine thread never waits on them.

Under Triton each ``send`` of a response and each ``is_cancelled`` is a round trip to the server
process (both release the GIL while they wait). Made from the engine thread they are paid per
token per stream on every decode step; here the engine thread only queues pieces and the
outbox thread delivers them while the engine computes the next step. A stream whose pieces are
produced faster than they can be sent gets the pending ones joined into one response: the
concatenated ``TEXT`` is the same, every response is still valid UTF-8 (pieces are whole
characters), and the final response (``FINISH_REASON``, ``TOKENS``) is still the last one.

Cancellation is polled here too, every ``cancel_poll_s`` for every live stream; the engine thread
reads the result (:meth:`QueuedSink.cancelled`) without a round trip. A failed send marks the
stream gone in the same way, so the scheduler frees its sequence at the next step boundary.
"""
from __future__ import annotations

import logging
import threading
import time

log = logging.getLogger(__name__)

#: How often the outbox asks the server whether each live stream's client went away.
CANCEL_POLL_S = 0.1


class QueuedSink:
    """A :class:`~.scheduler.StreamSink` whose calls are queued for the outbox thread."""

    def __init__(self, outbox: "Outbox", inner):
        self.outbox = outbox
        self.inner = inner
        self.gone = False
        self.why = ""  # why it is gone: cancelled by the client, or a failed send

    def send(self, text: str) -> None:
        self.outbox._put(self, text, None)

    def finish(self, text: str, reason: str, tokens: int) -> None:
        self.outbox._put(self, text, ("finish", reason, tokens))

    def fail(self, message: str, *code) -> None:
        self.outbox._put(self, "", ("fail", message, *code))

    def cancelled(self) -> bool:
        return self.gone


class Outbox:
    def __init__(self, cancel_poll_s: float = CANCEL_POLL_S):
        self.cancel_poll_s = cancel_poll_s
        self._cv = threading.Condition()
        self._pending: dict[QueuedSink, list] = {}  # sink -> [pieces, final]; insertion-ordered
        self._live: set[QueuedSink] = set()
        self._thread: threading.Thread | None = None
        self._stopping = False
        #: responses sent, and pieces that were joined into another response (lagging senders)
        self.sent = 0
        self.joined = 0

    def sink(self, inner) -> QueuedSink:
        queued = QueuedSink(self, inner)
        with self._cv:
            self._live.add(queued)
            self._cv.notify()  # the thread may be waiting without a deadline (nothing was live)
        return queued

    def start(self) -> "Outbox":
        self._thread = threading.Thread(target=self._run, name="trtserve-generate-outbox", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        """Deliver what is queued, then end the thread."""
        with self._cv:
            self._stopping = True
            self._cv.notify()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def _put(self, sink: QueuedSink, text: str, final) -> None:
        with self._cv:
            entry = self._pending.get(sink)
            if entry is None:
                self._pending[sink] = [[text] if text else [], final]
                self._cv.notify()
            else:
                if text:
                    entry[0].append(text)
                if final is not None:
                    entry[1] = final

    def _run(self) -> None:
        next_poll = time.monotonic() + self.cancel_poll_s
        while True:
            with self._cv:
                while not self._pending and not self._stopping:
                    wait = next_poll - time.monotonic() if self._live else None
                    if wait is not None and wait <= 0:
                        break
                    self._cv.wait(wait)
                batch, self._pending = self._pending, {}
                stopping = self._stopping
            for sink, (pieces, final) in batch.items():
                self._deliver(sink, pieces, final)
            if stopping and not batch:
                return
            if time.monotonic() >= next_poll:
                self._poll_cancelled()
                next_poll = time.monotonic() + self.cancel_poll_s

    def _deliver(self, sink: QueuedSink, pieces: list[str], final) -> None:
        text = "".join(pieces)
        self.joined += max(0, len(pieces) - 1)
        try:
            if final is None:
                if text and not sink.gone:
                    sink.inner.send(text)
                    self.sent += 1
                return
            self._forget(sink)
            if final[0] == "finish":
                sink.inner.finish(text, final[1], final[2])
            else:
                if text and not sink.gone:
                    sink.inner.send(text)
                sink.inner.fail(*final[1:])
            self.sent += 1
        except Exception as e:  # noqa: BLE001 - the client is gone: the scheduler frees the sequence
            log.info("could not deliver to a client: %s", e)
            self._forget(sink)
            sink.why = f"its stream failed ({e})"
            sink.gone = True

    def _poll_cancelled(self) -> None:
        with self._cv:
            live = list(self._live)
        for sink in live:
            try:
                cancelled = sink.inner.cancelled()
            except Exception as e:  # noqa: BLE001 - cannot ask: treat as gone
                cancelled, sink.why = True, f"its cancellation could not be checked ({e})"
            if cancelled:
                self._forget(sink)
                sink.why = sink.why or "its client cancelled the request"
                sink.gone = True

    def _forget(self, sink: QueuedSink) -> None:
        with self._cv:
            self._live.discard(sink)
