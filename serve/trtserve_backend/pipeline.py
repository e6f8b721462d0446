"""One deployment in one Python model: tokenizer -> engine -> postprocess in a single hop.

Wherever the engine itself runs in Python (ONNX Runtime in the embedded server, the torch
engine with CUDA graphs on a GPU), a three-step ensemble pays two extra Python-backend hops per
request (measured on an H200: ~1.2 ms at concurrency 1 and a ceiling near 16k requests/s on 16
cores before any work; one hop: 0.2 ms and ~45k). :class:`Pipeline` composes the same three
implementations the ensemble's steps run (:mod:`.steps`: the tokenizer, an engine with
``run_requests``, and the task's postprocess), so a task added to those is served in either
topology without code of its own here.

Row tasks (classification, embedding: one row per text) run the whole execution through the
engine and the postprocess at once. Windowed tasks (question answering, token classification)
hand the postprocess, per request, the engine's output and the tokenizer's side tensors (token
spans, the window -> item map, the item texts, token ids: :attr:`PipelineParameters.side_inputs`),
exactly what the ensemble wires from its tokenizer to its postprocess.

The model config of the one model carries the three steps' typed parameters
(:mod:`.parameters`) plus :class:`~.parameters.PipelineParameters`: the engine backend
(``onnxruntime`` | ``torch``) and the tensor names between the steps.
"""
from __future__ import annotations

import collections
import time
from typing import Callable, Sequence

import numpy as np

from .parameters import (OrtEncoderParameters, PipelineParameters, PostprocessParameters, TokenizerParameters,
                         TorchEncoderParameters)
from .steps import make_step_postprocess, make_tokenizer, windowed

#: engine backends that run inside a Python model
ENGINE_BACKENDS = ("onnxruntime", "torch")


def load_engine(backend: str, cfg, folder: str, input_names: Sequence[str], output_name: str, device: str = "cpu",
                hot: bool = False, others_busy: Callable[[], bool] | None = None):
    """The engine named by ``backend``, configured from ``cfg``'s typed parameters; ``hot``: for
    the preferred instance (:func:`~.parameters.is_hot_instance`; ONNX Runtime's threads differ,
    and ``others_busy`` says when it has the host to itself: busy.BusyBoard)."""
    if backend == "onnxruntime":
        from .ort_encoder import OrtEncoder

        params = OrtEncoderParameters.from_config(cfg).for_instance(hot)
        return OrtEncoder.from_parameters(params, folder, input_names, output_name, others_busy)
    if backend == "torch":
        from .torch_engine import TorchEncoder

        return TorchEncoder.from_parameters(TorchEncoderParameters.from_config(cfg), folder, input_names, device)
    raise ValueError(f"engine_backend {backend!r}; known: {ENGINE_BACKENDS}")


class PhaseClock:
    """Where an execution's time goes inside the model: seconds per phase, summed over executions
    (the served model keeps one when ``TRTSERVE_PHASE_TIMES`` is set and logs :meth:`summary`)."""

    def __init__(self) -> None:
        self.seconds: collections.Counter = collections.Counter()
        self.executions = 0
        self._last = 0.0

    def start(self) -> None:
        self._last = time.perf_counter()

    def lap(self, phase: str) -> None:
        now = time.perf_counter()
        self.seconds[phase] += now - self._last
        self._last = now

    def means_us(self) -> dict[str, float]:
        """Microseconds per execution of each phase."""
        n = max(1, self.executions)
        return {k: v / n * 1e6 for k, v in self.seconds.items()}

    def summary(self) -> str:
        return f"{self.executions} executions, us per execution: " + " ".join(
            f"{k}={v:.0f}" for k, v in self.means_us().items())


class _NoClock(PhaseClock):
    def start(self) -> None:
        pass

    def lap(self, phase: str) -> None:
        pass


class Pipeline:
    """Items of the requests of one execution -> each request's public outputs."""

    def __init__(self, tokenizer, engine, postprocess: Callable, *, encoder_inputs: Sequence[str] = (),
                 encoder_output: str = "", side_inputs: Sequence[str] = (), windows: bool = False):
        self.tokenizer = tokenizer
        self.engine = engine  # run_requests(list of {name: [n, seq]}, to_host=True) -> list of [n, ...]
        self.postprocess = postprocess
        self.encoder_inputs = tuple(encoder_inputs)
        self.encoder_output = encoder_output
        self.side_inputs = tuple(side_inputs)
        self.windows = windows
        self.clock: PhaseClock = _NoClock()

    @classmethod
    def from_config(cls, cfg, folder: str, device: str = "cpu", hot: bool = False,
                    others_busy: Callable[[], bool] | None = None) -> "Pipeline":
        """``hot``, ``others_busy``: this is the preferred instance (see :func:`load_engine`)."""
        params = PipelineParameters.from_config(cfg)
        inputs = params.encoder_inputs
        engine = load_engine(params.engine_backend, cfg, folder, inputs, params.encoder_output, device, hot,
                             others_busy)
        post = PostprocessParameters.from_config(cfg)
        tokenizer = make_tokenizer(TokenizerParameters.from_config(cfg), folder, inputs)
        return cls(tokenizer, engine, make_step_postprocess(post, folder), encoder_inputs=inputs,
                   encoder_output=params.encoder_output, side_inputs=params.side_inputs, windows=windowed(post.task))

    def run(self, requests: Sequence[Sequence]) -> list[dict[str, np.ndarray] | Exception | None]:
        """One dict of outputs per request; ``None`` for a request without items (a bad one), or
        the error that names what is wrong with a request (windowed tasks: too many windows)."""
        if self.windows:
            return self._run_windows(requests)
        live = [i for i, texts in enumerate(requests) if len(texts)]
        results: list = [None] * len(requests)
        if not live:
            return results
        if getattr(self.engine, "merge", "group") == "pad":
            # The engine pads an execution to its longest request anyway (one CUDA graph replay):
            # tokenize every text of the execution into that one batch directly.
            encoded = [self.tokenizer.encode([t for i in live for t in requests[i]])]
            self.clock.lap("tokenize")
            values = np.asarray(self.engine.run_requests(encoded, to_host=True)[0])
        else:
            # One engine batch per length bucket: each request padded to its own bucket, grouped.
            encoded = self.tokenizer.encode_requests([requests[i] for i in live])
            self.clock.lap("tokenize")
            outputs = self.engine.run_requests(encoded, to_host=True)
            values = np.asarray(outputs[0]) if len(outputs) == 1 else np.concatenate([np.asarray(o) for o in outputs])
        self.clock.lap("engine")
        # One postprocess call for the whole execution, then each request takes its rows.
        merged = self.postprocess(values)
        self.clock.lap("postprocess")
        start = 0
        for i in live:
            rows = len(requests[i])
            results[i] = {name: value[start:start + rows] for name, value in merged.items()}
            start += rows
        return results

    def _run_windows(self, requests: Sequence[Sequence]) -> list:
        """Every window of every request in one engine call; the postprocess per request, on its
        windows' rows and the tokenizer's side tensors (as the ensemble's postprocess gets them)."""
        results: list = [None] * len(requests)
        encoded = self.tokenizer.encode_requests(requests)
        live = []
        for i, rows in enumerate(encoded):
            if isinstance(rows, Exception):
                results[i] = rows
            elif len(requests[i]):
                live.append(i)
        if not live:
            return results
        outputs = self.engine.run_requests([{n: encoded[i][n] for n in self.encoder_inputs} for i in live],
                                           to_host=True)
        for i, out in zip(live, outputs):
            rows = encoded[i]
            # an engine that pads an execution to its longest request returns that many tokens
            width = rows[self.encoder_inputs[0]].shape[1]
            values = np.asarray(out, dtype=np.float32)[:, :width]
            results[i] = self.postprocess({self.encoder_output: values, **{n: rows[n] for n in self.side_inputs}})
        return results
