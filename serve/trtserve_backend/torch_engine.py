"""The PyTorch engine behind ``<name>_encoder`` for the ``torch`` backend (TorchScript + CUDA graphs).

The encoder is a TorchScript module traced by :mod:`trtserve_build.stages.torchscript` (the same task
module the ONNX export holds, in fp32, fp16 or hybrid). On a GPU, one CUDA graph is captured
per (batch size, sequence length) of a :class:`GraphPlan` when the model loads: the sequence
lengths are the tokenizer's length buckets, so every request shape the tokenizer produces has
a graph, and a batch is padded up to the nearest captured batch size (larger batches run in
chunks). A replay launches the whole encoder at once, so small batches are not launch-bound.
Shapes without a graph run the module eagerly. The requests of one Triton execution may differ
in length (the encoder's inputs allow ragged batches, so the dynamic batcher does not stop a
batch at each change of length bucket): they are right-padded to the longest and run as one
batch.

Everything except the capture itself is plain logic that runs on the CPU too (the unit tests
drive it with an eager stand-in for the graph), and ``torch`` is imported only where needed so
the planning helpers import anywhere.
"""
from __future__ import annotations

import bisect
import logging
import os
import time
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

from .batching import MERGE_MODES, check_merge, group_by_length, pad_merge, plan_batches, split_rows  # noqa: F401 - re-exported
from .programs import load_package, load_program, load_traced, read_metadata  # noqa: F401 - re-exported

log = logging.getLogger(__name__)



class TorchEngineError(RuntimeError):
    """The TorchScript module cannot be served as configured; the message says why."""


# ---- planning: pure logic -----------------------------------------------------------------

def default_graph_batch_sizes(max_batch_size: int, preferred: Sequence[int] = ()) -> tuple[int, ...]:
    """Powers of two up to ``max_batch_size``, plus it and the preferred batch sizes.

    Padding a batch of n up to the next captured size wastes at most n-1 rows of compute
    while keeping the number of graphs (and their memory) logarithmic in the batch size.
    """
    if max_batch_size < 1:
        raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
    sizes = {max_batch_size, *(p for p in preferred if 1 <= p <= max_batch_size)}
    b = 1
    while b < max_batch_size:
        sizes.add(b)
        b *= 2
    return tuple(sorted(sizes))


@dataclass(frozen=True)
class GraphPlan:
    """Which (batch size, sequence length) shapes get a captured CUDA graph."""

    batch_sizes: tuple[int, ...]
    seq_lengths: tuple[int, ...]

    def __post_init__(self) -> None:
        for name, values in (("batch_sizes", self.batch_sizes), ("seq_lengths", self.seq_lengths)):
            if not values or list(values) != sorted(set(values)) or values[0] < 1:
                raise ValueError(f"GraphPlan.{name} must be strictly increasing positive integers, got {list(values)}")

    @property
    def max_batch(self) -> int:
        return self.batch_sizes[-1]

    def keys(self) -> list[tuple[int, int]]:
        """Every captured shape, largest first (so later captures reuse the first one's memory pool)."""
        return sorted(((b, s) for b in self.batch_sizes for s in self.seq_lengths),
                      key=lambda k: (k[0] * k[1], k), reverse=True)

    def covers(self, seq_len: int) -> bool:
        return seq_len in self.seq_lengths

    def padded_batch(self, n: int) -> int:
        """The smallest captured batch size >= n (n must not exceed the largest)."""
        if not 1 <= n <= self.max_batch:
            raise ValueError(f"batch of {n} rows is outside 1..{self.max_batch}")
        return self.batch_sizes[bisect.bisect_left(self.batch_sizes, n)]

    def chunks(self, n: int) -> list[tuple[int, int]]:
        """Split n rows into (rows, padded batch) pieces: full largest graphs, then one padded rest."""
        if n < 1:
            raise ValueError(f"a batch needs at least one row, got {n}")
        full, rest = divmod(n, self.max_batch)
        pieces = [(self.max_batch, self.max_batch)] * full
        if rest:
            pieces.append((rest, self.padded_batch(rest)))
        return pieces


# ---- execution ----------------------------------------------------------------------------

class _Captured:
    """One shape's static input buffer, output and the replay callable."""

    def __init__(self, static_inputs, static_output, replay: Callable[[], None]):
        self.static_inputs = static_inputs  # [n_inputs, batch, seq] int64 on the device
        self.static_output = static_output
        self.replay = replay


class TorchEncoder:
    """Run a traced encoder on batches of token tensors, through captured CUDA graphs when possible.

    ``module(*inputs)`` takes the int64 tensors named ``input_names`` (each [batch, seq]) and
    returns one float tensor [batch, ...]. Rows are independent, which is what makes padding a
    batch with stale rows harmless: padded rows are computed and dropped.
    """

    def __init__(
        self,
        module,
        input_names: Sequence[str],
        device: str = "cuda",
        plan: GraphPlan | None = None,
        *,
        warmup_runs: int = 2,
        graph_factory: Callable | None = None,
    ):
        import torch

        self.torch = torch
        self.module = module
        self.input_names = tuple(input_names)
        self.device = torch.device(device)
        self.plan = plan
        self.warmup_runs = warmup_runs
        self._graph_factory = graph_factory
        self._graphs: dict[tuple[int, int], _Captured] = {}
        #: the same encoder without a mask (a fused engine's full-rows program, TorchScript or
        #: AOTInductor): run, and captured, for batches whose rows are all full length
        self.full_module = None
        self._full_graphs: dict[tuple[int, int], _Captured] = {}
        self._staging = None  # pinned host buffer for one H2D copy of all inputs
        self._staging_free = None  # event: the last copy out of _staging has finished
        self.capture_seconds = 0.0
        self.metadata: dict = {}
        #: how run_requests merges the requests of one execution (batching.MERGE_MODES)
        self.merge = "pad"
        #: TRTSERVE_CUDA_SYNC=blocking: wait for the GPU on a blocking event (the thread sleeps)
        #: before copying results to the host, instead of the copy's spin-wait. Measured on an H200
        #: (bench/gpu/run_sync_ab.sh, session 7): blocking served 5% less at the peak and added
        #: ~0.2 ms at one client, so spinning stays the default; the knob is the A/B's other arm.
        self.blocking_sync = os.environ.get("TRTSERVE_CUDA_SYNC", "spin") == "blocking"
        self._done = None  # the blocking event, made on first use

    @classmethod
    def from_file(cls, path: str, input_names: Sequence[str], device: str = "cuda",
                  plan: GraphPlan | None = None, **kwargs) -> "TorchEncoder":
        """Load a TorchScript file made by trtserve_build.stages.torchscript or .compiled (checked
        against ``device``), or an AOTInductor package (``.pt2``, .compiled)."""
        import torch

        if str(path).endswith(".pt2"):
            engine = cls(load_package(path, device), input_names, device, plan, **kwargs)
            engine.metadata = {"engine_format": "aoti"}
            return engine
        # Load on the CPU, then move parameters and buffers: the graph's tensor constants are the
        # scalars of shape arithmetic (``int(seq_len + 0)``) and must stay in host memory. Moved
        # to the GPU by map_location, each int() becomes a device sync, which CUDA graph capture
        # refuses (seen on an H200: cudaErrorStreamCaptureUnsupported).
        module, meta = load_traced(path)
        module = module.to(device)
        target = meta.get("target_device_type")
        if target and target != torch.device(device).type:
            raise TorchEngineError(
                f"{path} was traced for {target!r} devices and cannot run on {device!r}; rebuild it "
                f"with `trtserve-build engines` for this variant")
        traced_inputs = meta.get("inputs")
        if traced_inputs and list(traced_inputs) != list(input_names):
            raise TorchEngineError(f"{path} takes inputs {traced_inputs}, the model config feeds {list(input_names)}")
        module.eval()
        engine = cls(module, input_names, device, plan, **kwargs)
        engine.metadata = meta
        return engine

    @classmethod
    def from_parameters(cls, params, folder: str, input_names: Sequence[str], device: str) -> "TorchEncoder":
        """From a Python model's :class:`~.parameters.TorchEncoderParameters`: load, then capture the graphs."""
        import os

        plan = None
        if params.cuda_graphs and device != "cpu":
            plan = GraphPlan(tuple(params.cuda_graph_batch_sizes), tuple(params.cuda_graph_sequence_lengths))
        engine = cls.from_file(os.path.join(folder, params.torchscript_file), input_names=input_names,
                               device=device, plan=plan)
        if params.full_rows_file:
            engine.full_module = load_program(os.path.join(folder, params.full_rows_file), device)
        engine.merge = check_merge(params.merge_lengths)
        engine.capture()
        return engine

    # -- capture ----------------------------------------------------------------------------
    @property
    def graph_shapes(self) -> list[tuple[int, int]]:
        return sorted(self._graphs)

    def _static_inputs(self, batch: int, seq: int):
        torch = self.torch
        static = torch.zeros((len(self.input_names), batch, seq), dtype=torch.int64, device=self.device)
        if "attention_mask" in self.input_names:
            # No all-masked rows even before the first real batch lands in the buffer.
            static[self.input_names.index("attention_mask")].fill_(1)
        return static

    def _call(self, inputs, full: bool = False):
        torch = self.torch
        with torch.no_grad(), torch.jit.optimized_execution(False):
            return (self.full_module if full else self.module)(*inputs)

    def _programs(self) -> tuple[bool, ...]:
        """Which programs get graphs: the masked one, and the full-rows one where there is one."""
        return (False, True) if self.full_module is not None else (False,)

    def _uses_full(self, feeds: Mapping[str, object]) -> bool:
        """Whether this batch may run the no-mask program: one exists and no row is padded (known
        from the host copy of the mask; inputs already on the GPU take the masked one, no sync)."""
        if self.full_module is None or "attention_mask" not in feeds:
            return False
        mask = feeds["attention_mask"]
        return mask.device.type == "cpu" and bool(mask.all())

    def capture(self) -> float:
        """Warm up and capture every shape of the plan; returns the seconds it took."""
        if self.plan is None:
            return 0.0
        torch = self.torch
        started = time.perf_counter()
        # One input buffer per shape, shared by both programs' graphs: run() fills the chosen
        # graph's buffer before each replay, and replays are sequential.
        statics = {key: self._static_inputs(*key) for key in self.plan.keys()}
        if self._graph_factory is not None:
            for full in self._programs():
                graphs = self._full_graphs if full else self._graphs
                for key in self.plan.keys():
                    graphs[key] = self._graph_factory(self, statics[key], full=full)
        else:
            if self.device.type != "cuda":
                raise TorchEngineError(f"CUDA graphs need a CUDA device, engine is on {self.device}")
            pool = torch.cuda.graph_pool_handle()
            side = torch.cuda.Stream(device=self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):  # warm-up off the default stream, as capture requires
                for full in self._programs():
                    for static in statics.values():
                        for _ in range(self.warmup_runs):
                            self._call(list(static), full)
            torch.cuda.current_stream(self.device).wait_stream(side)
            torch.cuda.synchronize(self.device)
            for full in self._programs():
                graphs = self._full_graphs if full else self._graphs
                for key in self.plan.keys():  # largest first: the shared pool is sized once
                    static = statics[key]
                    graph = torch.cuda.CUDAGraph()
                    with torch.cuda.graph(graph, pool=pool):
                        output = self._call(list(static), full)
                    graphs[key] = _Captured(static, output, graph.replay)
            torch.cuda.synchronize(self.device)
        self.capture_seconds = time.perf_counter() - started
        log.info("captured %d CUDA graphs in %.1fs", len(self._graphs) + len(self._full_graphs), self.capture_seconds)
        return self.capture_seconds

    # -- running ----------------------------------------------------------------------------
    def _stack_inputs(self, feeds: Mapping[str, object], start: int, rows: int):
        """All inputs' rows [start, start+rows) as one [n_inputs, rows, seq] tensor ready to copy."""
        torch = self.torch
        tensors = [feeds[n][start:start + rows] for n in self.input_names]
        if tensors[0].device.type != "cpu" or self.device.type != "cuda":
            return torch.stack(tensors).to(self.device, torch.int64)
        # Host inputs: stack into a pinned buffer so the three inputs cross PCIe in one copy.
        count = len(tensors) * rows * tensors[0].shape[1]
        if self._staging is None or self._staging.numel() < count:
            self._staging = torch.empty(count, dtype=torch.int64).pin_memory()
            self._staging_free = None
        if self._staging_free is not None:
            self._staging_free.synchronize()  # the previous async copy must have left the buffer
        view = self._staging[:count].view(len(tensors), rows, tensors[0].shape[1])
        torch.stack([t.to(torch.int64) for t in tensors], out=view)
        return view

    def _after_copy(self) -> None:
        if self._staging is not None and self.device.type == "cuda":
            self._staging_free = self.torch.cuda.Event()
            self._staging_free.record()

    def run_eager(self, feeds: Mapping[str, object], full: bool = False):
        torch = self.torch
        return self._call([torch.as_tensor(feeds[n]).to(self.device, torch.int64) for n in self.input_names], full)

    def run(self, feeds: Mapping[str, object], full_rows: bool | None = None):
        """One batch ({name: [batch, seq] int64 tensor}) -> output tensor on the engine's device.
        ``full_rows``: the caller knows whether any row is padded (None: look at a host mask)."""
        torch = self.torch
        feeds = {n: torch.as_tensor(feeds[n]) for n in self.input_names}
        rows, seq = feeds[self.input_names[0]].shape
        full = self._uses_full(feeds) if full_rows is None else (full_rows and self.full_module is not None)
        if not self._graphs or not self.plan.covers(seq):
            return self.run_eager(feeds, full)
        graphs = self._full_graphs if full else self._graphs
        outputs, start = [], 0
        for count, padded in self.plan.chunks(rows):
            captured = graphs[(padded, seq)]
            captured.static_inputs[:, :count].copy_(self._stack_inputs(feeds, start, count), non_blocking=True)
            self._after_copy()
            captured.replay()
            # Clone: the next replay of this graph overwrites its static output.
            outputs.append(captured.static_output[:count].clone())
            start += count
        return outputs[0] if len(outputs) == 1 else torch.cat(outputs)

    def run_requests(self, requests: Sequence[Mapping[str, object]], *, to_host: bool = False,
                     merge: str | None = None) -> list:
        """Run the requests of one execution as few batches as possible.

        ``merge`` (default: the engine's ``merge``) ``"pad"``: one batch, every request right-padded to the longest sequence length
        among them (padding is masked out, so each row's result is unchanged; one replay instead
        of one per length bucket). ``merge="group"``: one batch per distinct sequence length.
        Returns one output tensor per request: on the engine's device, or with ``to_host`` in
        host memory (one device-to-host copy per batch, not one per request).
        """
        key = self.input_names[0]
        results: list = [None] * len(requests)
        for length, members in plan_batches(requests, key, merge or self.merge).items():
            out = self.run(self._merge([requests[i] for i in members], length))
            if to_host:
                self._wait_for_gpu()
                out = out.cpu()
            split_rows(out, requests, members, key, results)
        return results

    def _wait_for_gpu(self) -> None:
        """Sleep until the device's queued work is done (``blocking_sync``), so the copy after it
        does not spin a core while the GPU runs."""
        if not self.blocking_sync or self.device.type != "cuda":
            return
        if self._done is None:
            self._done = self.torch.cuda.Event(blocking=True)
        self._done.record()
        self._done.synchronize()

    def _merge(self, requests: Sequence[Mapping[str, object]], length: int) -> Mapping[str, object]:
        """Concatenate requests' rows, right-padding each to ``length`` with zeros (mask 0 = ignored)."""
        torch = self.torch
        return pad_merge(requests, self.input_names, length, as_array=torch.as_tensor,
                         zeros=lambda shape, like: torch.zeros(shape, dtype=torch.int64, device=like.device))


def eager_graph_factory(engine: TorchEncoder, static, full: bool = False) -> _Captured:
    """A stand-in for CUDA graph capture: 'replay' runs the module on the static buffers.

    It gives the CPU the same static-buffer semantics as a captured graph (inputs copied into a
    fixed buffer, output written into a fixed tensor), so the padding and chunking logic is
    testable without a GPU.
    """
    output = engine._call(list(static), full)

    def replay() -> None:
        output.copy_(engine._call(list(static), full))

    return _Captured(static, output, replay)
