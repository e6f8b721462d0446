"""How a deployment variant is served: its topology and its instance counts, "auto" included.

``topology``: "single" (one Python model that tokenizes, runs the engine and postprocesses) where
the engine runs in Python, "ensemble" (tokenizer -> encoder -> postprocess) around a C++ engine;
``"auto"`` instance knobs are sized from the cores of the host that generates the repository
(``make serve`` generates it where it serves).
"""
from __future__ import annotations

import os

from .enums import (AUTO, INSTANCE_KNOBS, PYTHON_ENGINE_BACKENDS, TOPOLOGIES, TORCH_ATTENTION, TORCH_ENGINE_FORMATS,
                    TORCH_PRECISIONS)
from .errors import SpecError


def resolve_topology(engine) -> str:
    """"ensemble" or "single" for an ``EngineSpec`` (resolving "auto" by its backend)."""
    if engine.topology != AUTO:
        return engine.topology
    return "single" if engine.backend in PYTHON_ENGINE_BACKENDS else "ensemble"


def validate_serving(engine, section: str) -> None:
    """Instance knobs (an integer or "auto") and the topology of an ``EngineSpec``."""
    for knob in INSTANCE_KNOBS:
        value, least = getattr(engine, knob), 0 if knob == "intra_op_threads" else 1
        if value != AUTO and (not isinstance(value, int) or isinstance(value, bool) or value < least):
            raise SpecError(f'{section} {knob} must be >= {least} (an integer) or "auto", got {value!r}')
    if not (isinstance(engine.thread_spinning, bool) or engine.thread_spinning == AUTO):
        raise SpecError(f'{section} thread_spinning must be true, false or "auto", got {engine.thread_spinning!r}')
    if engine.topology not in TOPOLOGIES:
        raise SpecError(f"{section} topology {engine.topology!r}; known: {TOPOLOGIES}")
    if engine.topology == "single" and engine.backend not in PYTHON_ENGINE_BACKENDS:
        raise SpecError(f'{section} topology "single" needs an engine that runs in a Python model '
                        f"({PYTHON_ENGINE_BACKENDS}); backend {engine.backend!r} is served as an ensemble")


def validate_torch_engine(engine, defaults, max_batch_size: int, section: str) -> None:
    """The torch-only keys of an ``EngineSpec``: allowed (and checked) for backend "torch", rejected
    elsewhere (``defaults``: an ``EngineSpec`` of the same backend with nothing set)."""
    if engine.backend != "torch":
        set_keys = [k for k in ("attention", "engine_format", "cuda_graphs", "cuda_graph_batch_sizes")
                    if getattr(engine, k) != getattr(defaults, k)]
        if set_keys:
            raise SpecError(f"{section} {set_keys} only apply to backend \"torch\" (this one is {engine.backend!r})")
        return
    if engine.precision not in TORCH_PRECISIONS:
        raise SpecError(f"{section} precision {engine.precision!r} is not available for backend \"torch\"; "
                        f"choose one of {TORCH_PRECISIONS}")
    for key, known in (("attention", TORCH_ATTENTION), ("engine_format", TORCH_ENGINE_FORMATS)):
        if getattr(engine, key) not in known:
            raise SpecError(f"{section} {key} {getattr(engine, key)!r}; known: {known}")
    sizes = list(engine.cuda_graph_batch_sizes)
    if sizes and (sizes != sorted(set(sizes)) or sizes[0] < 1 or sizes[-1] > max_batch_size):
        raise SpecError(f"{section} cuda_graph_batch_sizes must be strictly increasing within "
                        f"1..max_batch_size ({max_batch_size}), got {sizes}")


def host_sized(spec, variant: str, knob: str, cores: int | None = None) -> int:
    """An instance knob of ``[engine.<variant>]``, with "auto" sized from the host's cores.

    "auto": the one model (single topology) on a GPU gets cores/2 instances, up to 8
    (tokenizing and the Python-backend hop are per-request CPU work; on an H200 host 8 served
    35.9k texts/s and 12 served 24.3k); an ONNX Runtime engine one instance per 8 cores, at least
    2 and at most 4, with cores/instances intra-op threads (one run is parallel inside: few wide
    instances; two, so that one request tokenizes while another runs the graph: with one, a
    2-deep queue under 24 retrying clients on the 2-vCPU VM turned requests away 50 times in a
    row, with two it did not). Every instance with threads on all cores, sleeping instead of
    spinning (intra_op_threads = cores, thread_spinning "auto"), won c=1 in 4 of 5 A/Bs on the
    2-vCPU VM but not 8-client throughput on a quiet one (bench/gpu/NOTES.md, session 6): not
    the default until the 16-core A/B (bench/ort_threads_ab.py) says so;
    tokenizer and postprocess steps of an ensemble one instance per 4 cores, up to 8.
    """
    engine = spec.engine(variant)
    value = getattr(engine, knob)
    if value != AUTO:
        return int(value)
    cores = cores or os.cpu_count() or 1
    if knob == "intra_op_threads":
        return max(1, cores // host_sized(spec, variant, "instance_count", cores))
    if knob in ("tokenizer_instances", "postprocess_instances"):
        return max(1, min(8, cores // 4))
    if engine.backend == "torch" and resolve_topology(engine) == "single":
        return max(1, min(8, cores // 2))
    if engine.backend == "onnxruntime":
        return max(2, min(4, cores // 8))
    return max(1, min(2, cores // 8))


def thread_spinning(spec, variant: str, cores: int | None = None) -> bool:
    """``thread_spinning`` of ``[engine.<variant>]``: "auto" spins while the instances' intra-op
    threads together fit in the host's cores (0 threads: ONNX Runtime's default, one per core).

    Spinning threads start each of the graph's many small parallel ops at once (-0.6 ms per
    request at concurrency 1 on 2 cores), but where instances' threads share cores, concurrent
    runs spin against each other: 2 instances x 2 spinning threads on the 2-vCPU VM served 37.7
    texts/s against 68.2 with 1 thread each (bench/gpu/NOTES.md, session 4), and 45 against 87
    with 2 sleeping threads each (bench/ort_threads_ab.py).
    """
    engine = spec.engine(variant)
    if engine.thread_spinning != AUTO:
        return bool(engine.thread_spinning)
    cores = cores or os.cpu_count() or 1
    threads = host_sized(spec, variant, "intra_op_threads", cores) or cores
    return host_sized(spec, variant, "instance_count", cores) * threads <= cores
