"""One deployment in one Python model: tokenizer -> engine -> postprocess in a single hop.

Wherever the engine itself runs in Python (ONNX Runtime in the embedded server, the torch
engine with CUDA graphs on a GPU), a three-step ensemble pays two extra Python-backend hops per
request (measured on an H200: ~1.2 ms at concurrency 1 and a ceiling near 16k requests/s on 16
cores before any work; one hop: 0.2 ms and ~45k). :class:`Pipeline` composes the same three
implementations the ensemble's steps run (:class:`~.tokenize.BucketTokenizer`, an engine with
``run_requests``, and the task's postprocess from :func:`~.postprocess.make_postprocess`), so a task
added to those is served in either topology without code of its own here.

The model config of the one model carries the three steps' typed parameters
(:mod:`.parameters`) plus :class:`~.parameters.PipelineParameters`: the engine backend
(``onnxruntime`` | ``torch``) and the tensor names between the steps.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from .parameters import (OrtEncoderParameters, PipelineParameters, PostprocessParameters, TokenizerParameters,
                         TorchEncoderParameters)
from .postprocess import make_postprocess
from .tokenize import BucketTokenizer

#: engine backends that run inside a Python model
ENGINE_BACKENDS = ("onnxruntime", "torch")


def load_engine(backend: str, cfg, folder: str, input_names: Sequence[str], output_name: str, device: str = "cpu"):
    """The engine named by ``backend``, configured from ``cfg``'s typed parameters."""
    if backend == "onnxruntime":
        from .ort_encoder import OrtEncoder

        return OrtEncoder.from_parameters(OrtEncoderParameters.from_config(cfg), folder, input_names, output_name)
    if backend == "torch":
        from .torch_engine import TorchEncoder

        return TorchEncoder.from_parameters(TorchEncoderParameters.from_config(cfg), folder, input_names, device)
    raise ValueError(f"engine_backend {backend!r}; known: {ENGINE_BACKENDS}")


class Pipeline:
    """Texts of the requests of one execution -> each request's public outputs."""

    def __init__(self, tokenizer: BucketTokenizer, engine, postprocess: Callable[[np.ndarray], dict[str, np.ndarray]]):
        self.tokenizer = tokenizer
        self.engine = engine  # run_requests(list of {name: [n, seq]}, to_host=True) -> list of [n, ...]
        self.postprocess = postprocess

    @classmethod
    def from_config(cls, cfg, folder: str, device: str = "cpu") -> "Pipeline":
        params = PipelineParameters.from_config(cfg)
        inputs = params.encoder_inputs
        engine = load_engine(params.engine_backend, cfg, folder, inputs, params.encoder_output, device)
        post = PostprocessParameters.from_config(cfg)
        return cls(BucketTokenizer.from_parameters(TokenizerParameters.from_config(cfg), folder, inputs), engine,
                   make_postprocess(post.task, post.labels))

    def run(self, requests: Sequence[Sequence[str]]) -> list[dict[str, np.ndarray] | None]:
        """One dict of outputs per request; ``None`` for a request without texts (a bad one)."""
        live = [i for i, texts in enumerate(requests) if len(texts)]
        results: list[dict[str, np.ndarray] | None] = [None] * len(requests)
        if not live:
            return results
        if getattr(self.engine, "merge", "group") == "pad":
            # The engine pads an execution to its longest request anyway (one CUDA graph replay):
            # tokenize every text of the execution into that one batch directly.
            values = np.asarray(self.engine.run_requests(
                [self.tokenizer.encode([t for i in live for t in requests[i]])], to_host=True)[0])
        else:
            # One engine batch per length bucket: each request padded to its own bucket, grouped.
            outputs = self.engine.run_requests(self.tokenizer.encode_requests([requests[i] for i in live]), to_host=True)
            values = np.asarray(outputs[0]) if len(outputs) == 1 else np.concatenate([np.asarray(o) for o in outputs])
        # One postprocess call for the whole execution, then each request takes its rows.
        merged = self.postprocess(values)
        start = 0
        for i in live:
            rows = len(requests[i])
            results[i] = {name: value[start:start + rows] for name, value in merged.items()}
            start += rows
        return results
