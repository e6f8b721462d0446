"""TensorRT engine stage: one ONNX file -> one serialized plan + a JSON record beside it.

Two TensorRT flavours share this code path:

* ``tensorrt`` (full TensorRT 10.x/11.x) is the production builder. It only exists inside the
  NGC TensorRT / Triton containers (the compose ``engines`` service); its plans are what the
  Triton ``tensorrt`` backend loads, and they must be built by the same TensorRT version as the
  serving container, on the same GPU architecture.
* ``tensorrt_rtx`` (pip ``tensorrt-rtx-cu13``) builds plans ahead of time on a CPU-only
  machine. Its plans do NOT load in Triton's ``tensorrt`` backend and do not run on Hopper; it
  is used in CI to exercise the real parse / profile / build / serialize path.

Precision follows the *strongly typed* style: the precision of every tensor is already set in
the ONNX graph (FP32, FP16 weights and MatMuls, explicit Q/DQ for INT8, ...), so the builder
takes the graph as is and no FP16/INT8 builder flags or calibrators are used (deprecated in
TensorRT 10, absent in TensorRT-RTX). The ``precision`` given to :func:`build_plan` names what
the ONNX graph carries and is recorded; for ``fp32`` the TF32 math mode is disabled (see
:func:`build_plan`).

Usage::

    trtserve-build plan --onnx X.onnx --plan X.plan --spec deployments/embed.toml
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import logging
import os
import socket
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Iterator, Sequence

import trtserve_contract as contract

from ..core.enums import PRECISIONS
from ..core.errors import EngineBuildError, TensorRTUnavailableError
from ..core.files import sha256_file, write_bytes_atomic
from ..core.host import UNKNOWN, gpu_compute_capability
from ..core.paths import record_path
from ..core.records import EngineRecord
from ..core.spec import DeploymentSpec
from ..core.task_spec import encoder_max_batch_size
from ..runtime.tensorrt import TensorRTFlavour, detect_tensorrt

log = logging.getLogger(__name__)

DEFAULT_WORKSPACE_GB = 4.0

#: What a TensorRT-RTX plan runs on when no compute capability is set on the builder config
#: (TensorRT-RTX docs, "CPU-only AOT": portable across Ampere 8.0/8.6, Ada 8.9 and Blackwell
#: 12.x; Turing 7.5 only when asked for explicitly; Hopper 9.0 never).
RTX_DEFAULT_COMPUTE_CAPABILITIES = ("8.0", "8.6", "8.9", "12.x")


# ---------------------------------------------------------------------------------------
# Logging: TensorRT keeps ONE process-wide logger (the first one given to a Builder wins),
# so each flavour gets a single capturing logger and builds are serialised by a lock.
# ---------------------------------------------------------------------------------------
_BUILD_LOCK = threading.Lock()
_LOGGERS: dict[str, Any] = {}


def capturing_logger(flavour: TensorRTFlavour):
    if flavour.name in _LOGGERS:
        return _LOGGERS[flavour.name]
    trt = flavour.module
    S = trt.ILogger.Severity

    class _CapturingLogger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.messages: list[tuple[str, str]] | None = None

        def log(self, severity, msg):  # called by TensorRT, possibly from its threads
            if severity == S.VERBOSE:
                return
            level = {
                S.INTERNAL_ERROR: logging.CRITICAL,
                S.ERROR: logging.ERROR,
                S.WARNING: logging.WARNING,
            }.get(severity, logging.DEBUG)
            log.log(level, "[%s] %s", flavour.name, msg)
            if self.messages is not None and level >= logging.WARNING:
                self.messages.append((logging.getLevelName(level), msg))

    _LOGGERS[flavour.name] = _CapturingLogger()
    return _LOGGERS[flavour.name]


@contextmanager
def _captured(logger) -> Iterator[list[tuple[str, str]]]:
    messages: list[tuple[str, str]] = []
    logger.messages = messages
    try:
        yield messages
    finally:
        logger.messages = None


def _summarise(messages: list[tuple[str, str]], limit: int = 20) -> str:
    errors = [m for lvl, m in messages if lvl in ("ERROR", "CRITICAL")]
    picked = errors or [m for _, m in messages]
    if not picked:
        return "(TensorRT logged no warnings or errors; rerun with logging at DEBUG)"
    return "\n".join(f"  {m.strip()}" for m in picked[-limit:])


# ---------------------------------------------------------------------------------------
# Optimization profile
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Profile:
    """One optimization profile; the same [batch, seq] shapes apply to every encoder input."""

    min: tuple[int, int]
    opt: tuple[int, int]
    max: tuple[int, int]

    def shapes(self) -> dict[str, list[int]]:
        return {"min": list(self.min), "opt": list(self.opt), "max": list(self.max)}


def profiles_from_spec(spec: DeploymentSpec) -> list[Profile]:
    """The optimization profiles for ``spec``: deliberately ONE profile covering everything.

    * min = (1, shortest length bucket): the tokenizer pads every request to a bucket, so no
      sequence is shorter than ``length_buckets[0]``.
    * opt = (``batching.optimal_batch_size``, the median length bucket, the lower one of the
      two middles for an even count). TensorRT tunes kernels for the opt shape; the median
      bucket sits where typical sentence traffic lands and keeps tuning away from both the
      short and the long extreme (embed: buckets 16..256 -> 64).
    * max = (``batching.max_batch_size`` (windows: ``max_windows``), ``model.max_sequence_length``) so that every batch
      Triton's dynamic batcher can form, at every bucket, is inside the profile.

    One profile keeps the plan small and the Triton config simple; several profiles (one per
    bucket) would only pay off with per-bucket instance groups.
    """
    m, b = spec.model, spec.batching
    buckets = m.length_buckets
    opt_seq = buckets[(len(buckets) - 1) // 2]
    return [
        Profile(
            min=(1, buckets[0]),
            opt=(b.optimal_batch_size, opt_seq),
            max=(encoder_max_batch_size(spec), m.max_sequence_length),
        )
    ]


def is_plan_current(
    plan_path: str | os.PathLike[str],
    onnx_path: str | os.PathLike[str],
    precision: str,
    flavour: TensorRTFlavour | None = None,
    *,
    spec: DeploymentSpec | None = None,
    compute_capabilities: Sequence[str] | None = None,
) -> bool:
    """True when ``plan_path`` and its record exist and were built from this ONNX file
    (sha256), at this precision, by this TensorRT flavour and version, for the same target
    GPUs, and the plan on disk is the one recorded. With ``spec``, the optimization profiles
    must match it too.

    Target GPUs: for ``tensorrt_rtx`` the record must name ``compute_capabilities`` (as given
    to :func:`build_plan`; None = RTX's portable default); for full TensorRT the recorded
    compute capability must be this machine's GPU's (:func:`~trtserve_build.core.host.gpu_compute_capability`),
    and a plan is never current when either is unknown: full TensorRT plans only run on the
    architecture they were built for."""
    plan_path, onnx_path = Path(plan_path), Path(onnx_path)
    try:
        record = EngineRecord.load(record_path(plan_path))
        if not plan_path.is_file() or plan_path.stat().st_size != record.plan_bytes:
            return False
        flavour = flavour or detect_tensorrt()
        if (
            record.precision != precision
            or record.tensorrt_flavour != flavour.name
            or record.tensorrt_version != flavour.version
            or record.onnx_sha256 != sha256_file(onnx_path)
        ):
            return False
        if flavour.is_rtx:
            wanted = [str(c) for c in compute_capabilities] if compute_capabilities else list(RTX_DEFAULT_COMPUTE_CAPABILITIES)
            if record.compute_capabilities != wanted:
                return False
        else:
            here, _ = gpu_compute_capability()
            if here == UNKNOWN or record.compute_capabilities != [here]:
                return False
        if spec is not None and record.profiles != [
            {name: p.shapes() for name in record.inputs} for p in profiles_from_spec(spec)
        ]:
            return False
        return record.plan_sha256 == sha256_file(plan_path)
    except (OSError, ValueError, TensorRTUnavailableError):
        return False


# ---------------------------------------------------------------------------------------
# Build
# ---------------------------------------------------------------------------------------
def _rtx_compute_capability(trt: ModuleType, name: str):
    key = name.strip().upper().replace("SM_", "").replace("SM", "").replace(".", "")
    if key == "CURRENT":
        return trt.ComputeCapability.CURRENT
    member = getattr(trt.ComputeCapability, f"SM{key}", None)
    if member is None:
        known = [m for m in dir(trt.ComputeCapability) if m.startswith("SM")]
        raise ValueError(f"TensorRT-RTX cannot target compute capability {name!r}; known: {known} or 'current'")
    return member


def _parse_onnx(trt: ModuleType, network, logger, onnx_path: Path):
    parser = trt.OnnxParser(network, logger)
    ok = parser.parse_from_file(str(onnx_path))
    if not ok or parser.num_errors:
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        lines = "\n".join(f"  [{i + 1}/{len(errors)}] {e}" for i, e in enumerate(errors)) or "  (no parser error recorded)"
        raise EngineBuildError(
            f"TensorRT's ONNX parser rejected {onnx_path} with {len(errors)} error(s):\n{lines}\n"
            "Check the export (opset, unsupported ops, external data files next to the ONNX) "
            "or simplify the graph; `polygraphy inspect model --display-as=trt` shows the parse."
        )
    return parser  # keep alive until the build ends: it owns the weights


def _apply_profiles(trt: ModuleType, builder, network, config, profiles: list[Profile], onnx_path: Path):
    inputs = [network.get_input(i) for i in range(network.num_inputs)]
    names = [t.name for t in inputs]
    unknown = [n for n in names if n not in contract.ENCODER_INPUTS]
    if unknown:
        raise EngineBuildError(
            f"{onnx_path}: input(s) {unknown} are not encoder inputs {list(contract.ENCODER_INPUTS)}; "
            "re-export the model with the contract's input names"
        )
    if not inputs:
        raise EngineBuildError(f"{onnx_path}: the network has no inputs")
    for t in inputs:
        shape = tuple(t.shape)
        if len(shape) != 2:
            raise EngineBuildError(f"{onnx_path}: input {t.name} has shape {shape}; expected [batch, seq]")
        if any(d != -1 for d in shape):
            raise EngineBuildError(
                f"{onnx_path}: input {t.name} has static dims {shape}; export with dynamic_axes on batch and seq"
            )
        if t.dtype != trt.int64:
            raise EngineBuildError(f"{onnx_path}: input {t.name} is {t.dtype}; the contract says int64")
    return _add_profiles(builder, config, [{n: (p.min, p.opt, p.max) for n in names} for p in profiles], names)


def _add_profiles(builder, config, profiles: Sequence[dict[str, tuple]], names: list[str]) -> list[str]:
    """One optimization profile per entry of ``profiles``: input name -> (min, opt, max) shapes."""
    for shapes in profiles:
        missing = sorted(set(names) - set(shapes))
        if missing:
            raise EngineBuildError(f"the optimization profile lacks shapes for input(s) {missing}")
        profile = builder.create_optimization_profile()
        for name in names:
            profile.set_shape(name, *shapes[name])
        if config.add_optimization_profile(profile) < 0:
            raise EngineBuildError(f"TensorRT rejected the optimization profile {shapes} for inputs {names}")
    return names


def build_plan(
    onnx_path: str | os.PathLike[str],
    plan_path: str | os.PathLike[str],
    spec: DeploymentSpec,
    precision: str,
    *,
    flavour: TensorRTFlavour | None = None,
    workspace_gb: float = DEFAULT_WORKSPACE_GB,
    compute_capabilities: Sequence[str] | None = None,
    input_profiles: Sequence[dict[str, tuple]] | None = None,
) -> EngineRecord:
    """Build ``onnx_path`` into a serialized plan at ``plan_path`` (written atomically) and
    write its :class:`EngineRecord` to ``<plan_path>.json``.

    ``precision`` names what the (strongly typed) ONNX graph carries; the builder takes the
    graph as is. For ``fp32`` the TF32 builder flag is cleared: TF32 rounds MatMul inputs to
    a 10-bit mantissa (about 1e-3 relative error), which would break the FP32 fidelity the
    export checks promise (atol 1e-4 against PyTorch) for a speedup we do not want there.

    ``compute_capabilities`` (TensorRT-RTX only), e.g. ``["8.6"]`` or ``["current"]``: the
    GPU architectures to target instead of RTX's portable default (8.0, 8.6, 8.9, 12.x).
    Full TensorRT always builds for the GPU it runs on.

    ``input_profiles`` (a decoder graph: core/task_spec.py ``decoder_profiles``): one dict of
    input name -> (min, opt, max) per profile, instead of the encoder's one [batch, seq] profile.
    """
    onnx_path, plan_path = Path(onnx_path), Path(plan_path)
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}; known: {PRECISIONS}")
    if not onnx_path.is_file():
        raise FileNotFoundError(f"ONNX file not found: {onnx_path}")
    flavour = flavour or detect_tensorrt()
    if compute_capabilities and not flavour.is_rtx:
        raise ValueError("compute_capabilities applies to tensorrt_rtx only; full TensorRT targets the local GPU")
    trt = flavour.module
    logger = capturing_logger(flavour)
    profiles = profiles_from_spec(spec) if input_profiles is None else list(input_profiles)

    with _BUILD_LOCK, _captured(logger) as messages:
        start = time.perf_counter()
        builder = trt.Builder(logger)
        # TensorRT 10: strongly typed on request (explicit batch is the default and the flag is
        # gone). TensorRT-RTX and TensorRT 11: always strongly typed; the flag is accepted.
        flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
        network = builder.create_network(0 if flag is None else 1 << int(flag))
        strongly_typed = bool(flag is not None and network.get_flag(flag))
        parser = _parse_onnx(trt, network, logger, onnx_path)
        if network.num_outputs == 0:
            raise EngineBuildError(
                f"TensorRT's ONNX parser found no outputs in {onnx_path}: not an ONNX model, or an "
                f"empty graph; re-run the export:\n{_summarise(messages)}"
            )

        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
        tf32_flag = getattr(trt.BuilderFlag, "TF32", None)
        if tf32_flag is not None and precision == "fp32":
            config.clear_flag(tf32_flag)
        tf32 = None if tf32_flag is None else bool(config.get_flag(tf32_flag))

        if flavour.is_rtx:
            if compute_capabilities:
                config.num_compute_capabilities = len(compute_capabilities)
                for i, cc in enumerate(compute_capabilities):
                    if not config.set_compute_capability(_rtx_compute_capability(trt, cc), i):
                        raise EngineBuildError(f"TensorRT-RTX refused compute capability {cc!r}:\n{_summarise(messages)}")
                ccs, cc_source = [str(c) for c in compute_capabilities], "explicit"
            else:
                ccs, cc_source = list(RTX_DEFAULT_COMPUTE_CAPABILITIES), "tensorrt_rtx default"
        else:
            here, cc_source = gpu_compute_capability()
            ccs = [here]

        input_names = (_apply_profiles(trt, builder, network, config, profiles, onnx_path) if input_profiles is None
                       else _add_profiles(builder, config, profiles, [network.get_input(i).name
                                                                      for i in range(network.num_inputs)]))
        output_names = [network.get_output(i).name for i in range(network.num_outputs)]

        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise EngineBuildError(
                f"TensorRT ({flavour.name} {flavour.version}) could not build {onnx_path} "
                f"with profile(s) {[p.shapes() if isinstance(p, Profile) else p for p in profiles]}:\n"
                f"{_summarise(messages)}\n"
                "Check the profile against the model (max_sequence_length vs. position embeddings), "
                f"raise the workspace (now {workspace_gb} GiB), or build in the NGC TensorRT container."
            )
        build_seconds = time.perf_counter() - start
        del parser

    data = memoryview(serialized)
    if data.nbytes == 0:
        raise EngineBuildError(f"TensorRT returned an empty plan for {onnx_path}:\n{_summarise(messages)}")
    write_bytes_atomic(plan_path, data)
    record = EngineRecord(
        tensorrt_flavour=flavour.name,
        tensorrt_version=flavour.version,
        compute_capabilities=ccs,
        compute_capability_source=cc_source,
        precision=precision,
        profiles=[{name: p.shapes() for name in input_names} if isinstance(p, Profile) else
                  {name: dict(zip(("min", "opt", "max"), map(list, p[name]))) for name in input_names}
                  for p in profiles],
        inputs=input_names,
        outputs=output_names,
        strongly_typed=strongly_typed,
        tf32=tf32,
        workspace_bytes=int(workspace_gb * (1 << 30)),
        onnx_path=str(onnx_path.resolve()),
        onnx_sha256=sha256_file(onnx_path),
        plan_path=str(plan_path.resolve()),
        plan_sha256=hashlib.sha256(data).hexdigest(),
        plan_bytes=data.nbytes,
        build_seconds=round(build_seconds, 3),
        hostname=socket.gethostname(),
        created_utc=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        spec_name=spec.name,
        triton_loadable=not flavour.is_rtx,
    )
    write_bytes_atomic(record_path(plan_path), record.to_json().encode())
    log.info(
        "built %s (%d bytes, %s %s, %s) in %.1f s",
        plan_path, record.plan_bytes, flavour.name, flavour.version, precision, build_seconds,
    )
    return record
