"""`TrtServeClient`: classify and embed texts with the trtserve Triton ensembles.

Any deployment with the same task contract works; model names are parameters:

- classification (default model ``sentiment``): ``TEXT`` BYTES ``[1]`` ->
  ``LABEL`` BYTES ``[1]``, ``SCORE`` FP32 ``[1]``, ``PROBABILITIES`` FP32 ``[len(labels)]``
- embedding (default model ``embed``): ``TEXT`` BYTES ``[1]`` -> ``EMBEDDING`` FP32 ``[dim]``
- question answering (default model ``qa``): ``QUESTION``, ``CONTEXT`` BYTES ``[1]`` ->
  ``ANSWER`` BYTES, ``SCORE`` FP32, ``START``/``END`` INT32 ``[1]`` (character offsets in CONTEXT)
- token classification (default model ``ner``): ``TEXT`` BYTES ``[1]`` -> ``ENTITIES`` BYTES
  ``[1]`` (a JSON array of the token-classification pipeline's entity objects)

Example::

    with TrtServeClient() as client:
        client.wait_ready("sentiment", timeout_s=60)
        [result] = client.classify("a gripping, beautifully acted film")
        vectors = client.embed(["first text", "second text"])  # float32 [2, 384]
        answer = client.answer("who directed it?", context)     # Answer(text, score, start, end)
        [entities] = client.entities("Tom Hanks flew to Paris.")  # [Entity(label, score, word, start, end)]
"""
from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

import numpy as np
import trtserve_contract as contract

from ._transport import DEFAULT_URLS, PROTOCOLS, Transport, make_transport
from .errors import (
    TRANSPORT_EXCEPTIONS,
    BadInputError,
    InferenceError,
    TrtServeError,
    translate_error,
)
from .generation import GenerationOptions, GenerationResult, GenerationStream
from .inputs import Texts, encode_texts, split_batches, text_tensor
from .results import (
    DEFAULT_LABELS,
    Answer,
    Classification,
    Entity,
    decode_answers,
    decode_classifications,
    decode_embeddings,
    decode_entities,
)
from .retry import RetryPolicy, call_with_retry

__all__ = ["TrtServeClient", "DEFAULT_CLASSIFY_MODEL", "DEFAULT_EMBED_MODEL", "DEFAULT_QA_MODEL",
           "DEFAULT_NER_MODEL", "DEFAULT_GENERATE_MODEL", "READY_PROBE_TEXT"]

DEFAULT_CLASSIFY_MODEL = "sentiment"
DEFAULT_EMBED_MODEL = "embed"
DEFAULT_QA_MODEL = "qa"
DEFAULT_NER_MODEL = "ner"
DEFAULT_GENERATE_MODEL = "generate"
# Sent by wait_ready: a real request through the whole ensemble (tokenizer, encoder,
# postprocess), because /v2/health/ready stays green when a Python stub has died.
READY_PROBE_TEXT = "trtserve readiness probe"

_CLASSIFICATION_OUTPUTS = (contract.LABEL, contract.SCORE, contract.PROBABILITIES)
_EMBEDDING_OUTPUTS = (contract.EMBEDDING,)
_QA_OUTPUTS = (contract.ANSWER, contract.SCORE, contract.START, contract.END)
_NER_OUTPUTS = (contract.ENTITIES,)


class TrtServeClient:
    """Client for the trtserve ensembles over gRPC (default) or HTTP.

    ``url`` is ``host:port`` without a scheme; ``None`` means ``127.0.0.1:8001`` for gRPC and
    ``127.0.0.1:8000`` for HTTP. ``timeout_s`` bounds every request (gRPC: the call deadline;
    HTTP: the connect and network timeouts). Requests are split into chunks of the model's
    ``max_batch_size``, read once per model from its config; ``max_batch_size`` overrides that
    (and skips the config request). ``labels`` names the classifier's classes in
    ``PROBABILITIES`` order. ``retry`` (a :class:`~trtserve_client.retry.RetryPolicy`) retries
    each request chunk the server refused (queue full, its queue timeout, unreachable) with
    exponential backoff and full jitter within the policy's deadline; ``None`` (the default)
    sends every request once.

    Every failure is a :class:`~trtserve_client.errors.TrtServeError` subclass. One instance
    is not safe to share between threads; create one per thread.
    """

    def __init__(
        self,
        url: str | None = None,
        protocol: str = "grpc",
        timeout_s: float = 10.0,
        max_batch_size: int | None = None,
        labels: Sequence[str] = DEFAULT_LABELS,
        retry: RetryPolicy | None = None,
    ) -> None:
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
        url = url or DEFAULT_URLS[protocol]
        if "://" in url:
            raise ValueError(f"url is host:port without a scheme, got {url!r}")
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s!r}")
        if max_batch_size is not None and (isinstance(max_batch_size, bool) or max_batch_size < 1):
            raise ValueError(f"max_batch_size must be None or >= 1, got {max_batch_size!r}")
        if len(labels) < 2 or len(set(labels)) != len(labels):
            raise ValueError(f"labels must be at least two distinct names, got {labels!r}")
        self._url = url
        self._protocol = protocol
        self._timeout_s = float(timeout_s)
        self._max_batch_size = max_batch_size
        self._labels = tuple(labels)
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise ValueError(f"retry must be a RetryPolicy or None, got {retry!r}")
        self._retry = retry
        self._configs: dict[str, dict] = {}  # model -> its config (fetched once)
        self._closed = False
        with self._translating():
            self._transport: Transport = make_transport(protocol, url, self._timeout_s)

    # -- properties ---------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return self._url

    @property
    def protocol(self) -> str:
        return self._protocol

    @property
    def timeout_s(self) -> float:
        return self._timeout_s

    @property
    def labels(self) -> tuple[str, ...]:
        return self._labels

    @property
    def retry(self) -> RetryPolicy | None:
        return self._retry

    # -- public API ---------------------------------------------------------------------------

    def classify(
        self, texts: Texts, model: str = DEFAULT_CLASSIFY_MODEL, labels: Sequence[str] | None = None
    ) -> list[Classification]:
        """Classify one text or a sequence of texts; one :class:`Classification` per text, in
        order. ``labels`` overrides the constructor's label names for this call. An empty
        sequence returns ``[]`` without a request."""
        encoded = encode_texts(texts)
        if not encoded:
            return []
        outputs = self._infer(model, {contract.TEXT: encoded}, _CLASSIFICATION_OUTPUTS)
        with self._adding_context(model):
            return decode_classifications(
                outputs[contract.LABEL],
                outputs[contract.SCORE],
                outputs[contract.PROBABILITIES],
                count=len(encoded),
                labels=self._labels if labels is None else tuple(labels),
            )

    def embed(self, texts: Texts, model: str = DEFAULT_EMBED_MODEL) -> np.ndarray:
        """Embed one text or a sequence of texts: float32 ``[n, dim]``, rows in input order
        (L2-normalised by the server). An empty sequence returns a ``[0, 0]`` array without a
        request."""
        encoded = encode_texts(texts)
        if not encoded:
            return np.zeros((0, 0), dtype=np.float32)
        outputs = self._infer(model, {contract.TEXT: encoded}, _EMBEDDING_OUTPUTS)
        with self._adding_context(model):
            return decode_embeddings(outputs[contract.EMBEDDING], count=len(encoded))

    def answer(self, question: str, context: str, model: str = DEFAULT_QA_MODEL) -> Answer:
        """The best answer to ``question`` in ``context`` (contexts of any length: the server
        splits them into windows). ``Answer.found`` is False when the model prefers none."""
        [result] = self.answers([(question, context)], model=model)
        return result

    def answers(self, pairs: Sequence[tuple[str, str]], model: str = DEFAULT_QA_MODEL) -> list[Answer]:
        """One :class:`Answer` per ``(question, context)`` pair, in order."""
        if isinstance(pairs, tuple) and len(pairs) == 2 and all(isinstance(p, str) for p in pairs):
            raise BadInputError("answers() takes a sequence of (question, context) pairs; use answer(q, c)")
        pairs = list(pairs)
        if not pairs:
            return []
        for i, pair in enumerate(pairs):
            if not (isinstance(pair, (tuple, list)) and len(pair) == 2 and all(isinstance(p, str) for p in pair)):
                raise BadInputError(f"pairs[{i}] must be a (question, context) pair of str, got {pair!r:.60}")
        questions = encode_texts([q for q, _ in pairs])
        contexts = encode_texts([c for _, c in pairs])
        outputs = self._infer(model, {contract.QUESTION: questions, contract.CONTEXT: contexts}, _QA_OUTPUTS)
        with self._adding_context(model):
            return decode_answers(outputs[contract.ANSWER], outputs[contract.SCORE], outputs[contract.START],
                                  outputs[contract.END], [c for _, c in pairs])

    def entities(self, texts: Texts, model: str = DEFAULT_NER_MODEL) -> list[list[Entity]]:
        """The entities of one text or of each of a sequence of texts (one list per text)."""
        encoded = encode_texts(texts)
        if not encoded:
            return []
        outputs = self._infer(model, {contract.TEXT: encoded}, _NER_OUTPUTS)
        with self._adding_context(model):
            return decode_entities(outputs[contract.ENTITIES], count=len(encoded))

    def generate(
        self,
        prompt: str,
        max_new_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        stop: Sequence[str] = (),
        model: str = DEFAULT_GENERATE_MODEL,
    ) -> GenerationStream:
        """Stream a continuation of ``prompt``: iterate the returned stream for text pieces as the
        server produces them (each valid UTF-8); afterwards it holds ``finish_reason``
        (``length`` | ``stop`` | ``eos``), ``tokens`` and ``text``. gRPC streams over Triton's
        bidirectional stream, HTTP over its ``generate_stream`` endpoint. Options left ``None``
        take the server's defaults (greedy; the model's default MAX_NEW_TOKENS)."""
        if self._closed:
            raise ValueError("the client is closed")
        if not isinstance(prompt, str):
            raise BadInputError(f"prompt must be a str, got {type(prompt).__name__}")
        options = GenerationOptions(max_new_tokens, temperature, top_p, seed, tuple(stop))
        return GenerationStream(self._translated(model, self._transport.generate_events(model, prompt, options)))

    def generate_text(self, prompt: str, **options) -> GenerationResult:
        """The non-streaming form of :meth:`generate`: the whole text, finish reason and token count."""
        return self.generate(prompt, **options).result()

    def _translated(self, model: str, events: Iterator[dict]) -> Iterator[dict]:
        with self._translating(model):
            yield from events

    def wait_ready(
        self,
        model: str | Sequence[str] = DEFAULT_CLASSIFY_MODEL,
        timeout_s: float = 60.0,
        poll_interval_s: float = 0.5,
    ) -> float:
        """Poll until a real inference on ``model`` (or each of several models) succeeds.

        Health endpoints are not enough: a dead Python stub leaves /v2/health/ready green.
        Returns the seconds waited. ``timeout_s=0`` tries once. Retries every error except
        :class:`BadInputError` (the model rejects a plain text: waiting will not fix it),
        including :class:`ModelNotFoundError`, since a server in explicit model-control mode
        does not know a model until it is loaded. After ``timeout_s`` it raises the last
        error's class again, with the time waited in the message and the last error as cause.
        """
        models = [model] if isinstance(model, str) else list(model)
        start = time.monotonic()
        deadline = start + timeout_s
        for name in models:
            while True:
                try:
                    # No retry policy here: this loop is the retry, bounded by timeout_s.
                    probe = [READY_PROBE_TEXT.encode("utf-8")]
                    inputs = {input_name: probe for input_name in self._model_inputs(name)}
                    self._infer(name, inputs, outputs=(), retry=False)
                    break
                except BadInputError:
                    raise
                except TrtServeError as e:
                    if time.monotonic() + poll_interval_s > deadline:
                        raise type(e)(
                            f"{e} (still failing after {time.monotonic() - start:.1f}s of "
                            f"wait_ready, timeout_s={timeout_s:g})",
                            status=e.status,
                        ) from e
                time.sleep(poll_interval_s)
        return time.monotonic() - start

    def is_live(self) -> bool:
        """Whether the server answers its liveness endpoint. Never raises for an unreachable
        server: returns ``False``. Says nothing about models; use :meth:`wait_ready`."""
        try:
            with self._translating():
                return self._transport.is_live()
        except TrtServeError:
            return False

    def model_max_batch_size(self, model: str) -> int:
        """The chunk size used for ``model``: the constructor's ``max_batch_size`` if given,
        else the model config's ``max_batch_size`` (fetched once, cached); 1 for a model
        without batching."""
        chunk_size, _ = self._batch_plan(model)
        return chunk_size

    def close(self) -> None:
        """Close the connection. Idempotent."""
        if not self._closed:
            self._closed = True
            self._transport.close()

    def __enter__(self) -> TrtServeClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"TrtServeClient(url={self._url!r}, protocol={self._protocol!r})"

    # -- internals ----------------------------------------------------------------------------

    def _where(self, model: str | None = None) -> str:
        where = f"{self._url} ({self._protocol})"
        return f"model {model!r} at {where}" if model else where

    @contextmanager
    def _translating(self, model: str | None = None) -> Iterator[None]:
        """Turn tritonclient/transport exceptions into TrtServeErrors, keeping the cause."""
        try:
            yield
        except TrtServeError:
            raise
        except TRANSPORT_EXCEPTIONS as e:
            raise translate_error(e, context=self._where(model)) from e

    @contextmanager
    def _adding_context(self, model: str) -> Iterator[None]:
        try:
            yield
        except InferenceError as e:
            raise type(e)(f"{self._where(model)}: {e}", status=e.status) from e

    def _model_config(self, model: str) -> dict:
        """The model's config (fetched once, cached)."""
        if self._closed:
            raise ValueError("the client is closed")
        if model not in self._configs:
            with self._translating(model):
                self._configs[model] = self._transport.model_config(model)
        return self._configs[model]

    def _model_inputs(self, model: str) -> tuple[str, ...]:
        """The model's input names (``TEXT`` if its config does not list them)."""
        return tuple(i["name"] for i in self._model_config(model).get("input", [])) or (contract.TEXT,)

    def _batch_plan(self, model: str) -> tuple[int, bool]:
        """(chunk size, whether the model has a batch axis)."""
        if self._closed:
            raise ValueError("the client is closed")
        if self._max_batch_size is not None:
            return self._max_batch_size, True
        server_max = int(self._model_config(model).get("max_batch_size", 0) or 0)
        return (server_max, True) if server_max > 0 else (1, False)

    def _infer(
        self, model: str, columns: Mapping[str, list[bytes]], outputs: Sequence[str], *, retry: bool = True
    ) -> dict[str, np.ndarray]:
        """Send the rows of ``columns`` (input name -> one encoded text per row) in chunks and
        concatenate each requested output over the chunks.

        ``outputs=()`` asks for the model's default outputs and returns nothing (readiness
        probe). Checks that each output is present with one row per text.
        """
        # The first request to a model reads its config, and is retried like the inference: a
        # deployment served as one model is itself unloaded and loaded when it is repaired.
        chunk_size, batched = call_with_retry(self._retry if retry else None, lambda: self._batch_plan(model))
        parts: dict[str, list[np.ndarray]] = {name: [] for name in outputs}
        rows = len(next(iter(columns.values())))
        for chunk in split_batches(range(rows), chunk_size):
            tensors = {name: text_tensor([values[i] for i in chunk], batched=batched)
                       for name, values in columns.items()}

            def send(tensors: dict[str, np.ndarray] = tensors) -> dict[str, np.ndarray | None]:
                with self._translating(model):
                    return self._transport.infer(model, tensors, outputs)

            # Per chunk: chunks already answered are not sent again.
            response = call_with_retry(self._retry if retry else None, send)
            for name in outputs:
                array = response.get(name)
                if array is None:
                    raise InferenceError(
                        f"{self._where(model)}: the response has no {name} output "
                        f"(expected {', '.join(outputs)}); is the model deployed for this task?"
                    )
                array = np.asarray(array)
                if not batched:
                    array = array.reshape(1, -1)
                if array.ndim == 0 or array.shape[0] != len(chunk):
                    raise InferenceError(
                        f"{self._where(model)}: {name} has shape {list(array.shape)} for a "
                        f"request of {len(chunk)} text(s)"
                    )
                parts[name].append(array)
        return {name: np.concatenate(arrays, axis=0) for name, arrays in parts.items()}
