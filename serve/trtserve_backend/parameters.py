"""Typed parameters of each Python model: one class per model writes them into the generated
config.pbtxt (``parameters { key: ... value { string_value: ... } }``, by the build) and the same
class reads them back in the model's ``initialize``. Keys and defaults exist once, here.

Encoding of a value as a Triton string parameter: ``str`` as is, ``int`` in decimal, ``bool``
and tuples as JSON (``true``, ``[8, 16]``, ``["negative", "positive"]``).
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping, TypeVar

from .model_config import ModelConfigError

P = TypeVar("P", bound="ModelParameters")

#: Field metadata: the parameter's key in config.pbtxt when it is not the field name.
KEY = "key"
#: Field metadata: leave the parameter out of config.pbtxt when its value is empty.
OMIT_EMPTY = "omit_empty"


def _encode(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return json.dumps(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, (tuple, list)):
        return json.dumps(list(value))
    raise TypeError(f"cannot encode parameter value {value!r}")


def _decode(kind: str, raw: str, where: str) -> Any:
    try:
        if kind == "str":
            return raw
        if kind == "int":
            return int(raw)
        if kind == "bool":
            value = json.loads(raw)
            if not isinstance(value, bool):
                raise ValueError("not true/false")
            return value
        if kind.startswith("tuple"):
            value = json.loads(raw)
            if not isinstance(value, list):
                raise ValueError("not a JSON list")
            return tuple(value)
    except ValueError as e:
        raise ModelConfigError(f"{where}: {raw!r} is not a valid {kind} ({e})") from e
    raise TypeError(f"{where}: unsupported parameter type {kind}")


def hot_group(model: str) -> str:
    """The instance group of ``model``'s preferred instance (the build names it,
    trtserve_build.stages.triton_config.preferred_instances; the rest are ``<model>_pool``)."""
    return f"{model}_hot"


def pool_group(model: str) -> str:
    """The instance group of ``model``'s other instances (beside :func:`hot_group`)."""
    return f"{model}_pool"


def is_hot_instance(instance: str, model: str) -> bool:
    """Whether the Triton instance ``instance`` (``args["model_instance_name"]``) is in
    ``model``'s :func:`hot_group`: Triton names instances ``<group>_<index>`` (r24.10 core:
    ``sentiment_hot_0``), and older cores a group of one instance ``<group>`` alone."""
    group = hot_group(model)
    return instance == group or (instance.startswith(group + "_") and instance[len(group) + 1:].isdigit())


@dataclass(frozen=True)
class ModelParameters:
    """Base: :meth:`to_config` for the build, :meth:`from_config` for the Python model."""

    #: What the parameters are of, for error messages.
    model_role: ClassVar[str] = "python model"

    @classmethod
    def key(cls, f: dataclasses.Field) -> str:
        return f.metadata.get(KEY, f.name)

    def to_config(self) -> dict[str, str]:
        """{config.pbtxt parameter key: string value}, in field order."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.metadata.get(OMIT_EMPTY) and not value:
                continue
            out[self.key(f)] = _encode(value)
        return out

    @classmethod
    def from_parameters(cls: type[P], parameters: Mapping[str, str], model: str = "?") -> P:
        """Read the string parameters of a model config; missing keys take the field's default."""
        kwargs = {}
        for f in dataclasses.fields(cls):
            key = cls.key(f)
            where = f"{model}: parameter '{key}'"
            if key in parameters:
                kwargs[f.name] = _decode(str(f.type), parameters[key], where)
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ModelConfigError(f"{model}: config.pbtxt lacks parameter '{key}' ({cls.model_role})")
        return cls(**kwargs)

    @classmethod
    def from_config(cls: type[P], config) -> P:
        """From a :class:`~trtserve_backend.model_config.PythonModelConfig`."""
        return cls.from_parameters(config.parameters, config.name)


@dataclass(frozen=True)
class TokenizerParameters(ModelParameters):
    model_role: ClassVar[str] = "tokenizer"

    tokenizer_file: str
    max_sequence_length: int
    length_buckets: tuple[int, ...]
    pad_token_id: int
    #: Threads of the fast tokenizer's Rayon pool in this model's process (tokenize.py).
    tokenizer_threads: int = 1
    #: Input limits, checked before any text is decoded or tokenized (trtserve_backend.limits):
    #: bytes of text summed over one request's text inputs (TEXT; QUESTION + CONTEXT), and texts
    #: (items) per request; 0 = no limit.
    max_request_text_bytes: int = 0
    max_request_texts: int = 0
    #: The windowed tasks (question answering, token classification) split each item into
    #: windows; the others leave these out of the config (one row per text).
    task: str = field(default="", metadata={OMIT_EMPTY: True})
    #: Overlap of consecutive windows in tokens (QA: doc_stride; NER: stride, 0 = one window).
    stride: int = field(default=0, metadata={OMIT_EMPTY: True})
    #: Windows one request may need at most (the encoder's max batch size).
    max_windows: int = field(default=0, metadata={OMIT_EMPTY: True})
    #: QA: questions are cut to this many tokens.
    max_question_length: int = field(default=0, metadata={OMIT_EMPTY: True})
    #: QA: answers extend to whole words.
    align_to_words: bool = field(default=False, metadata={OMIT_EMPTY: True})


@dataclass(frozen=True)
class OrtEncoderParameters(ModelParameters):
    model_role: ClassVar[str] = "ONNX Runtime encoder"

    onnx_file: str
    #: ONNX Runtime intra-op threads (0 = ONNX Runtime's default).
    intra_op_threads: int = 0
    precision: str = "fp32"
    #: One ONNX Runtime batch per length bucket in an execution ("group"). On the CPU, compute
    #: grows with the padded tokens; padding every request to the longest ("pad", what the GPU
    #: engine does to replay one CUDA graph) did not serve more texts/s on 2 cores.
    merge_lengths: str = "group"
    #: Rows per ONNX Runtime run (0: no limit): a request of a windowed task can bring hundreds.
    max_rows_per_run: int = field(default=0, metadata={OMIT_EMPTY: True})
    #: ONNX Runtime worker threads spin while a run is in flight (and stop when it returns);
    #: false: they sleep until woken (ort_encoder.OrtEncoder).
    thread_spinning: bool = True
    #: The two above for the one model's preferred instance (group ``<name>_hot``: the one an
    #: idle server runs every request on), which :meth:`for_instance` picks; the build writes the
    #: same values as above where there is no such instance.
    hot_intra_op_threads: int = 0
    hot_thread_spinning: bool = True
    #: The preferred instance's threads while no other instance of the model executes (spinning;
    #: 0: none): ort_encoder.OrtEncoder runs a second session on them (busy.BusyBoard).
    solo_intra_op_threads: int = 0

    def for_instance(self, hot: bool) -> "OrtEncoderParameters":
        """These parameters as the engine of one instance runs them: the hot instance's thread
        count and spinning in ``intra_op_threads`` / ``thread_spinning`` where ``hot``; the
        others have no solo session."""
        if not hot:
            return dataclasses.replace(self, solo_intra_op_threads=0)
        return dataclasses.replace(self, intra_op_threads=self.hot_intra_op_threads,
                                   thread_spinning=self.hot_thread_spinning)


@dataclass(frozen=True)
class TorchEncoderParameters(ModelParameters):
    model_role: ClassVar[str] = "torch encoder"

    #: the engine file: TorchScript (``.pt``) or an AOTInductor package (``.pt2``, the fused encoder)
    torchscript_file: str
    precision: str
    attention: str
    #: AOTInductor only: the same encoder compiled without a mask, run for batches with no padding
    full_rows_file: str = field(default="", metadata={OMIT_EMPTY: True})
    cuda_graphs: bool = True
    #: One CUDA graph per (batch size, tokenizer length bucket): every shape the tokenizer sends.
    cuda_graph_batch_sizes: tuple[int, ...] = ()
    cuda_graph_sequence_lengths: tuple[int, ...] = ()
    #: "gpu": the output leaves the encoder on the GPU through DLPack and Triton copies it for
    #: the CPU postprocess; "cpu" copies it inside the encoder instead. On an H200 the two were
    #: within 0.1 ms at one client and within the +-15% spread between server runs at 16-64
    #: clients. (model.py used to default to "cpu" while the build always wrote "gpu".)
    output_device: str = "gpu"
    #: Let Triton hand GPU-resident inputs over as they are (DLPack), not staged to the CPU
    #: (a Triton Python-backend setting, read by Triton itself).
    force_cpu_only_input_tensors: str = field(default="no", metadata={KEY: "FORCE_CPU_ONLY_INPUT_TENSORS"})
    #: The requests of one execution, padded to the longest of them, run as one batch ("pad"):
    #: one CUDA graph replay per execution on the GPU (the CPU encoder groups instead).
    merge_lengths: str = "pad"


@dataclass(frozen=True)
class PostprocessParameters(ModelParameters):
    model_role: ClassVar[str] = "postprocess"

    task: str
    #: Label names by class id (classification, token classification; left out when empty).
    labels: tuple[str, ...] = field(default=(), metadata={OMIT_EMPTY: True})
    #: QA: answers kept per question (the pipeline's top_k); the served ANSWER is the first.
    n_best: int = field(default=0, metadata={OMIT_EMPTY: True})
    max_answer_length: int = field(default=0, metadata={OMIT_EMPTY: True})
    handle_impossible_answer: bool = field(default=False, metadata={OMIT_EMPTY: True})
    align_to_words: bool = field(default=False, metadata={OMIT_EMPTY: True})
    #: NER: none | simple | first | average | max.
    aggregation_strategy: str = field(default="", metadata={OMIT_EMPTY: True})
    #: NER: the tokenizer (token strings, subwords) beside model.py.
    tokenizer_file: str = field(default="", metadata={OMIT_EMPTY: True})


@dataclass(frozen=True)
class GenerateParameters(ModelParameters):
    """The decoupled ``generate`` model (GPT-2 family): engine, limits and tokenizer."""

    model_role: ClassVar[str] = "generate"

    tokenizer_file: str
    #: "onnxruntime" (the ONNX export with past key/values, on the CPU) or "torch" (GPT-2 with a
    #: static KV cache on the device, CUDA graphs for decode steps).
    engine: str
    #: The limits of :class:`~trtserve_backend.generation.requests.GenerationLimits`.
    context_length: int
    max_prompt_tokens: int
    max_new_tokens: int
    default_max_new_tokens: int
    max_sequences: int
    #: Sequences per decode step (one engine call); ``max_sequences`` may be larger.
    max_decode_batch: int
    eos_token_id: int
    #: Bytes of PROMPT in one request, checked before it is decoded or tokenized
    #: (trtserve_backend.limits); 0 = no limit. ``max_prompt_tokens`` is checked after.
    max_request_text_bytes: int = 0
    #: onnxruntime: the graph file in the version folder, and intra-op threads (0 = all usable
    #: cores but one: generation.ort_executor.default_intra_op_threads).
    onnx_file: str = field(default="", metadata={OMIT_EMPTY: True})
    intra_op_threads: int = 0
    #: torch: the checkpoint folder in the version folder, its precision (fp32 | fp16 | bf16) and
    #: the decode batch sizes captured as CUDA graphs (on a GPU).
    checkpoint_dir: str = field(default="", metadata={OMIT_EMPTY: True})
    precision: str = "fp32"
    graph_batch_sizes: tuple[int, ...] = ()
    #: Deliver responses and poll cancellation from a thread of their own (generation.outbox),
    #: so the engine thread makes no round trip to the server per token; false: the engine
    #: thread sends each piece itself and asks every stream about cancellation every step.
    response_thread: bool = True


@dataclass(frozen=True)
class PipelineParameters(ModelParameters):
    """The one-model deployment (single topology, trtserve_backend.pipeline): which engine runs
    and the tensor names between the steps. The tokenizer's, the engine's and the postprocess's
    own parameters (the classes above) sit beside these in the same config.pbtxt."""

    model_role: ClassVar[str] = "one-model deployment"

    #: "onnxruntime" (OrtEncoderParameters) or "torch" (TorchEncoderParameters)
    engine_backend: str
    encoder_inputs: tuple[str, ...]
    encoder_output: str
    #: Tokenizer outputs the postprocess reads beside the encoder output (the windowed tasks:
    #: token spans, window -> item, item texts; NER also the token ids), as the ensemble wires them.
    side_inputs: tuple[str, ...] = field(default=(), metadata={OMIT_EMPTY: True})
    #: Keep the host's cores from halting while the server executed within this many ms
    #: (trtserve_backend.idle_poll; 0 = off).
    idle_poll_ms: int = field(default=0, metadata={OMIT_EMPTY: True})
