"""How a deployment variant is served: its topology and its instance counts, "auto" included.

``topology``: "single" (one Python model that tokenizes, runs the engine and postprocesses) where
the engine runs in Python, "ensemble" (tokenizer -> encoder -> postprocess) around a C++ engine;
``"auto"`` instance knobs are sized from the cores of the host that generates the repository
(``make serve`` generates it where it serves).
"""
from __future__ import annotations

import os

from .enums import (AUTO, INSTANCE_KNOBS, PYTHON_ENGINE_BACKENDS, THREAD_KNOBS, TOPOLOGIES, TORCH_ATTENTION,
                    TORCH_ENGINE_FORMATS, TORCH_PRECISIONS)
from .errors import SpecError


def resolve_topology(engine) -> str:
    """"ensemble" or "single" for an ``EngineSpec`` (resolving "auto" by its backend)."""
    if engine.topology != AUTO:
        return engine.topology
    return "single" if engine.backend in PYTHON_ENGINE_BACKENDS else "ensemble"


def validate_serving(engine, section: str) -> None:
    """Instance knobs (an integer or "auto") and the topology of an ``EngineSpec``."""
    for knob in INSTANCE_KNOBS:
        value, least = getattr(engine, knob), 0 if knob in THREAD_KNOBS else 1
        if value != AUTO and (not isinstance(value, int) or isinstance(value, bool) or value < least):
            raise SpecError(f'{section} {knob} must be >= {least} (an integer) or "auto", got {value!r}')
    for knob in ("thread_spinning", "hot_thread_spinning"):
        value = getattr(engine, knob)
        if not (isinstance(value, bool) or value == AUTO):
            raise SpecError(f'{section} {knob} must be true, false or "auto", got {value!r}')
    if engine.topology not in TOPOLOGIES:
        raise SpecError(f"{section} topology {engine.topology!r}; known: {TOPOLOGIES}")
    poll = engine.idle_poll_ms
    if not isinstance(poll, int) or isinstance(poll, bool) or poll < 0:
        raise SpecError(f"{section} idle_poll_ms must be an integer >= 0 (0 = off), got {poll!r}")
    if poll and (engine.backend != "torch" or resolve_topology(engine) != "single"):
        # beside ONNX Runtime's spinning pool the pollers cost: 2.1x the c=1 time on 2 vCPUs
        raise SpecError(f'{section} idle_poll_ms applies to backend "torch" served as one model (this variant: '
                        f"backend {engine.backend!r}, topology {resolve_topology(engine)!r})")
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
    2-vCPU VM but not 8-client throughput on a quiet one (bench/gpu/NOTES.md, session 6), and
    lost c=1 on 16 cores (2 x 16 sleeping 6.29 ms against 2 x 8 spinning 4.69 ms);
    tokenizer and postprocess steps of an ensemble one instance per 4 cores, up to 8.

    ``solo_intra_op_threads`` "auto": every core where there is a preferred instance (the one an
    idle server runs every request on: :func:`has_hot_instance`) and the pool's instances run on
    fewer; 0 (none) elsewhere. That instance then runs a second ONNX Runtime session on every core,
    spinning, while no other instance of the model executes (trtserve_backend.busy), and
    ``hot_intra_op_threads`` "auto" is the pool's count: under load it is one of the pool.
    perf_analyzer, 5 interleaved rounds (README, session 10): on the 2-vCPU VM c=1 10.78 ms and
    133.1 texts/s at 8 clients, against 12.22 / 126.8 for the hot instance sleeping on both
    cores, 10.18 / 107.5 spinning on both, 14.82 / 127.5 for every instance on 1 core; on 16
    cores 3.84 ms / 513.0 against 4.00 / 531.2 for 2 x 8 everywhere.

    Without a solo session, ``hot_intra_op_threads`` "auto" is every core where the pool's
    instances run one thread each (the "auto" sizing on 2-3 cores), else the pool's count. On the 2-vCPU VM
    (bench/ort_threads_ab.py, perf_analyzer, two runs of 5 interleaved rounds, medians,
    docs/results/vm_bench/ort_hot_threads_ab_*.json) the hot instance on 2 sleeping threads beside
    a 1-thread pool served c=1 in 13.0 / 11.5 ms against 14.3 / 13.3 (faster in every round) at
    123 / 134 against 128 / 139 texts/s with 8 clients; with its 2 threads spinning, 10.0 / 9.3
    ms but 106 / 110 texts/s (under load they spin against the pool's run). Where the pool
    already runs several spinning threads (16 cores: 2 x 8), every core means 16 sleeping
    threads, which lost c=1 there (above): unchanged until a 16-core A/B of the hot arms
    (``bench/gpu/run_cpu_bench.sh`` with ``ORT_AB=1``, its header) says otherwise.
    """
    engine = spec.engine(variant)
    value = getattr(engine, knob)
    if value != AUTO:
        return int(value)
    cores = cores or os.cpu_count() or 1
    if knob == "intra_op_threads":
        return max(1, cores // host_sized(spec, variant, "instance_count", cores))
    if knob == "solo_intra_op_threads":
        threads = host_sized(spec, variant, "intra_op_threads", cores)
        return cores if 0 < threads < cores and has_hot_instance(spec, variant, cores) else 0
    if knob == "hot_intra_op_threads":
        threads = host_sized(spec, variant, "intra_op_threads", cores)
        if host_sized(spec, variant, "solo_intra_op_threads", cores):
            return threads
        return cores if threads == 1 and has_hot_instance(spec, variant, cores) else threads
    if knob in ("tokenizer_instances", "postprocess_instances"):
        return max(1, min(8, cores // 4))
    if engine.backend == "torch" and resolve_topology(engine) == "single":
        return max(1, min(8, cores // 2))
    if engine.backend == "onnxruntime":
        return max(2, min(4, cores // 8))
    return max(1, min(2, cores // 8))


def has_hot_instance(spec, variant: str, cores: int | None = None) -> bool:
    """Whether ``[engine.<variant>]`` is served with a preferred instance (``<name>_hot``,
    stages.triton_config.preferred_instances): the one model (single topology) with more than
    one instance. Only its ONNX Runtime takes ``hot_intra_op_threads`` / ``hot_thread_spinning``."""
    engine = spec.engine(variant)
    return resolve_topology(engine) == "single" and host_sized(spec, variant, "instance_count", cores) > 1


def thread_spinning(spec, variant: str, cores: int | None = None, hot: bool = False) -> bool:
    """``thread_spinning`` of ``[engine.<variant>]`` (``hot``: ``hot_thread_spinning``, the
    preferred instance's): "auto" spins while the intra-op threads of all the instances, the hot
    one's included, together fit in the host's cores (0 threads: ONNX Runtime's default, one per
    core); without a hot instance, "auto" hot is the instances' own setting. A single-threaded
    session has no worker threads, so its setting changes nothing.

    Spinning threads start each of the graph's many small parallel ops at once (-0.6 ms per
    request at concurrency 1 on 2 cores), but where instances' threads share cores, concurrent
    runs spin against each other: 2 instances x 2 spinning threads on the 2-vCPU VM served 37.7
    texts/s against 68.2 with 1 thread each (bench/gpu/NOTES.md, session 4), and 45 against 87
    with 2 sleeping threads each (bench/ort_threads_ab.py); a hot instance of 2 spinning threads
    beside a 1-thread pool, 110 against 134 sleeping (host_sized).
    """
    engine = spec.engine(variant)
    setting = engine.hot_thread_spinning if hot else engine.thread_spinning
    if setting != AUTO:
        return bool(setting)
    cores = cores or os.cpu_count() or 1
    hot_instance = has_hot_instance(spec, variant, cores)
    if hot and not hot_instance:  # no such instance: what the instances have
        return thread_spinning(spec, variant, cores)
    threads = host_sized(spec, variant, "intra_op_threads", cores) or cores
    instances = host_sized(spec, variant, "instance_count", cores)
    if hot_instance:
        hot_threads = host_sized(spec, variant, "hot_intra_op_threads", cores) or cores
        return hot_threads + (instances - 1) * threads <= cores
    return instances * threads <= cores
