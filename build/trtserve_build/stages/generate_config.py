"""The ``generate`` model's config: typed :class:`GenerateSettings` -> Triton's ``ModelConfig``
protobuf (never a template), with the typed :class:`~trtserve_backend.parameters.GenerateParameters`
that ``triton_models/generate.py`` reads back in ``initialize``.

The model is decoupled (a request's responses stream), one Python model per deployment, batched
by Triton (``max_batch_size`` >= 8: a request's tensors are [1, 1] like every other model here)
and step by step by its scheduler (``max_decode_batch`` sequences per engine call).
"""
from __future__ import annotations

from dataclasses import dataclass

import trtserve_contract as contract
from trtserve_backend.generation.requests import GenerationLimits
from trtserve_backend.parameters import GenerateParameters
from tritonclient.grpc import model_config_pb2 as mc

from ..core.errors import ConfigError
from ..core.instances import host_sized
from ..core.paths import ONNX_FILE, TOKENIZER_FILE
from ..core.pbtxt import tensor_config
from ..core.spec import DeploymentSpec
from ..core.tasks import GENERATE_INPUT_DECLS, GENERATE_OUTPUT_DECLS

#: The torch engine's checkpoint folder inside the version folder.
CHECKPOINT_DIR = "checkpoint"
ENGINES = ("onnxruntime", "torch")


@dataclass(frozen=True)
class GenerateSettings:
    """Everything the ``generate`` model's config says (from a spec: :func:`settings_from_spec`)."""

    limits: GenerationLimits
    max_batch_size: int = 8  # Triton's: requests per execute (each is one sequence)
    max_decode_batch: int = 8  # sequences per decode step
    eos_token_id: int = 50256
    intra_op_threads: int = 0
    instance_count: int = 1
    engine: str = "onnxruntime"  # | "torch" (static KV cache + CUDA graphs)
    precision: str = "fp32"  # torch: fp32 | fp16 | bf16
    graph_batch_sizes: tuple[int, ...] = ()  # torch: decode steps captured as CUDA graphs
    gpu: bool = False
    #: bytes of PROMPT per request, checked before tokenizing (the encoder deployments' default)
    max_request_text_bytes: int = 1_048_576


def settings_from_spec(spec: DeploymentSpec, variant: str) -> GenerateSettings:
    """A generation spec's settings for ``variant`` (``[model]``, ``[generation]``, ``[batching]``,
    ``[engine.<variant>]``)."""
    g, engine = spec.generation, spec.engine(variant)
    limits = GenerationLimits(context_length=spec.model.max_sequence_length, max_prompt_tokens=g.max_prompt_tokens,
                              max_new_tokens=g.max_new_tokens, default_max_new_tokens=g.default_max_new_tokens,
                              max_sequences=g.max_sequences)
    return GenerateSettings(
        limits=limits, max_batch_size=spec.batching.max_batch_size, max_decode_batch=g.max_decode_batch,
        eos_token_id=g.eos_token_id, intra_op_threads=host_sized(spec, variant, "intra_op_threads"),
        instance_count=host_sized(spec, variant, "instance_count"), engine=engine.backend,
        precision=engine.precision, graph_batch_sizes=tuple(engine.cuda_graph_batch_sizes), gpu=variant != "cpu",
        max_request_text_bytes=spec.batching.max_request_text_bytes)


def generate_config(settings: GenerateSettings, name: str = "generate") -> mc.ModelConfig:
    """The decoupled ``generate`` model's ``ModelConfig``."""
    if settings.max_batch_size < 8:
        raise ConfigError(f"{name}: max_batch_size must be >= 8 (the contract), got {settings.max_batch_size}")
    if settings.engine not in ENGINES:
        raise ConfigError(f"{name}: engine must be one of {ENGINES}, got {settings.engine!r}")
    config = mc.ModelConfig(name=name, backend="python", max_batch_size=settings.max_batch_size)
    config.model_transaction_policy.decoupled = True
    config.dynamic_batching.CopyFrom(mc.ModelDynamicBatching())
    config.input.extend([tensor_config(mc.ModelInput, d, optional=d.name in contract.GENERATE_OPTIONAL_INPUTS)
                         for d in GENERATE_INPUT_DECLS])
    config.output.extend([tensor_config(mc.ModelOutput, d) for d in GENERATE_OUTPUT_DECLS])
    kind = mc.ModelInstanceGroup.KIND_GPU if settings.gpu else mc.ModelInstanceGroup.KIND_CPU
    config.instance_group.extend([mc.ModelInstanceGroup(kind=kind, count=settings.instance_count)])
    engine = (dict(onnx_file=ONNX_FILE, intra_op_threads=settings.intra_op_threads)
              if settings.engine == "onnxruntime" else
              dict(checkpoint_dir=CHECKPOINT_DIR, precision=settings.precision,
                   graph_batch_sizes=tuple(settings.graph_batch_sizes)))
    params = GenerateParameters(
        tokenizer_file=TOKENIZER_FILE, engine=settings.engine, **settings.limits.parameters(),
        max_decode_batch=settings.max_decode_batch, eos_token_id=settings.eos_token_id,
        max_request_text_bytes=settings.max_request_text_bytes, **engine)
    for key, value in params.to_config().items():
        config.parameters[key].string_value = value
    return config
