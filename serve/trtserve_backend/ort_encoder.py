"""ONNX Runtime encoder (the CPU engine behind ``<name>_encoder``).

The dynamic batcher hands one execution several requests, padded by the tokenizer to length
buckets; :mod:`.batching` turns them into ONNX Runtime batches (one per length, or one padded
to the longest request). Where the graph's output has no sequence axis (classification logits,
pooled embeddings), each batch runs without the columns no row uses: the bucket's padding is
masked out anyway, and on the CPU compute grows with the tokens (review snippets: 27.8 tokens,
padded to 33.3 on average; one text 11% faster without them, 1 thread).
"""
from __future__ import annotations

import os
from typing import Callable, Sequence

import numpy as np

import trtserve_contract as contract

from .batching import check_merge, pad_merge, plan_batches, split_rows


class OrtEncoder:
    def __init__(self, onnx_path: str, input_names: Sequence[str], output_name: str, intra_op_threads: int = 0,
                 merge: str = "group", max_rows_per_run: int = 0, thread_spinning: bool = True,
                 solo_intra_op_threads: int = 0, others_busy: Callable[[], bool] | None = None):
        self.session = open_session(onnx_path, intra_op_threads, thread_spinning)
        #: solo_intra_op_threads > 0 (the one model's preferred instance): a second session on
        #: that many spinning threads, run while ``others_busy()`` says no other instance of the
        #: model is executing (busy.BusyBoard): one request alone gets every core, and under
        #: load the instance keeps to its share of them and sleeps between ops like the pool.
        self.solo = open_session(onnx_path, solo_intra_op_threads, True) if solo_intra_op_threads > 0 else None
        self.others_busy = others_busy or (lambda: False)
        #: ONNX Runtime runs, and those on the solo session (the served model logs both)
        self.runs = self.solo_runs = 0
        #: how this session runs, for the served model's log
        self.threads = f"intra-op threads {intra_op_threads or 'default'}, spinning {thread_spinning}"
        if self.solo is not None:
            self.threads += f"; alone: {solo_intra_op_threads} spinning"
        graph_inputs = {i.name for i in self.session.get_inputs()}
        missing = set(input_names) - graph_inputs
        if missing:
            raise ValueError(f"{onnx_path}: ONNX graph lacks inputs {sorted(missing)} (has {sorted(graph_inputs)})")
        self.input_names = tuple(input_names)
        self.output_name = output_name
        outputs = {o.name: o.shape for o in self.session.get_outputs()}
        #: Run each batch only as wide as its longest row (see the module's doc): outputs of shape
        #: [batch, n] only, and only with an attention mask to read the lengths from.
        self.trim_padding = (len(outputs.get(output_name, ())) == 2 and contract.ATTENTION_MASK in self.input_names)
        self.merge = check_merge(merge)
        #: Rows per ONNX Runtime run (0: no limit). The windowed tasks (QA, NER) send one row per
        #: window, so one request can bring hundreds of rows; attention memory grows with
        #: rows x length^2, so a large batch runs in slices.
        self.max_rows_per_run = max_rows_per_run

    @classmethod
    def from_parameters(cls, params, folder: str, input_names: Sequence[str], output_name: str,
                        others_busy: Callable[[], bool] | None = None) -> "OrtEncoder":
        """From a Python model's :class:`~.parameters.OrtEncoderParameters` and its version folder
        (``others_busy``: see ``solo_intra_op_threads``)."""
        return cls(os.path.join(folder, params.onnx_file), input_names=input_names, output_name=output_name,
                   intra_op_threads=params.intra_op_threads, merge=params.merge_lengths,
                   max_rows_per_run=params.max_rows_per_run, thread_spinning=params.thread_spinning,
                   solo_intra_op_threads=params.solo_intra_op_threads, others_busy=others_busy)

    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        if self.trim_padding:
            feeds = trim_padding(feeds, self.input_names)
        rows = int(feeds[self.input_names[0]].shape[0])
        step = self.max_rows_per_run or rows
        session = self.solo if self.solo is not None and not self.others_busy() else self.session
        self.runs += 1
        self.solo_runs += session is self.solo
        if rows <= step:
            return session.run([self.output_name], {n: feeds[n] for n in self.input_names})[0]
        return np.concatenate([
            session.run([self.output_name], {n: feeds[n][i:i + step] for n in self.input_names})[0]
            for i in range(0, rows, step)])

    def run_requests(self, requests: Sequence[dict[str, np.ndarray]], *, to_host: bool = True) -> list[np.ndarray]:
        """Run the requests of one execution as few batches as ``merge`` allows; one output each
        (always in host memory: ``to_host`` is accepted for the engines' common interface)."""
        key = self.input_names[0]
        results: list[np.ndarray | None] = [None] * len(requests)
        for length, members in plan_batches(requests, key, self.merge).items():
            out = self.run(pad_merge([requests[i] for i in members], self.input_names, length))
            split_rows(out, requests, members, key, results)
        return results  # type: ignore[return-value]


def open_session(onnx_path: str, intra_op_threads: int, thread_spinning: bool):
    """An ONNX Runtime CPU session on ``intra_op_threads`` (0: one per core)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if intra_op_threads > 0:
        options.intra_op_num_threads = intra_op_threads
    # thread_spinning: worker threads spin inside a Run (each of the graph's many small
    # parallel ops starts at once instead of waiting for a futex wake-up: -0.6 ms per request
    # at concurrency 1 on 2 cores) but stop spinning when it returns, so between batches they
    # do not burn the cores that the tokenizer, postprocess and gRPC threads of the same
    # server need (spinning between runs cost 20% of the served throughput). Off: workers
    # sleep until woken, so instances whose threads share cores do not spin against each
    # other's runs (OrtEncoderParameters.thread_spinning).
    spin = "1" if thread_spinning else "0"
    options.add_session_config_entry("session.intra_op.allow_spinning", spin)
    options.add_session_config_entry("session.inter_op.allow_spinning", spin)
    options.add_session_config_entry("session.force_spinning_stop", "1")
    return ort.InferenceSession(onnx_path, options, providers=["CPUExecutionProvider"])


def trim_padding(feeds: dict[str, np.ndarray], names: Sequence[str]) -> dict[str, np.ndarray]:
    """``feeds`` without the trailing columns that no row's attention mask covers (rows are
    right-padded: a row's mask is ones, then zeros)."""
    mask = feeds[contract.ATTENTION_MASK]
    width = max(1, int(mask.sum(axis=1).max(initial=1)))
    if width >= mask.shape[1]:
        return feeds
    return {n: np.ascontiguousarray(feeds[n][:, :width]) for n in names}
