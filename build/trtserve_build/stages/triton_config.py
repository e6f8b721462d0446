"""Triton model configs, built as ``ModelConfig`` protobufs from the spec; never from templates.

Each function returns a ``model_config_pb2.ModelConfig``; :mod:`trtserve_build.core.pbtxt`
writes it with ``text_format`` and parses a config.pbtxt back (protobuf rejects unknown
fields), so tests can round-trip every generated file. Python models' parameters come from
their typed classes in :mod:`trtserve_backend.parameters`, which model.py reads back.
"""
from __future__ import annotations

from typing import Iterable

import trtserve_contract as contract

from trtserve_backend.parameters import (
    ModelParameters,
    OrtEncoderParameters,
    PipelineParameters,
    PostprocessParameters,
    TokenizerParameters,
    TorchEncoderParameters,
    hot_group,
    pool_group,
)
from trtserve_backend.torch_engine import default_graph_batch_sizes
from tritonclient.grpc import model_config_pb2 as mc

from ..core.enums import FUSED_FORMATS
from ..core.errors import ConfigError
from ..core.instances import host_sized, thread_spinning
from ..core.pbtxt import tensor_config
from ..core.paths import ONNX_FILE, PLAN_FILE, TOKENIZER_FILE, TORCHSCRIPT_FILE, full_rows_path, fused_engine_name
from ..core.records import ExportManifest
from ..core.spec import DeploymentSpec
from ..core.task_spec import NERSpec, QASpec, encoder_max_batch_size, window_stride
from ..core.tasks import ENCODER_INPUT_DECLS, WINDOW_DECLS, TensorDecl, get_task


def _inputs(decls: Iterable[TensorDecl]):
    return [tensor_config(mc.ModelInput, d) for d in decls]


def _outputs(decls: Iterable[TensorDecl]):
    return [tensor_config(mc.ModelOutput, d) for d in decls]


def _parameters(config: mc.ModelConfig, params: ModelParameters) -> None:
    """The Python model's typed parameters (trtserve_backend.parameters), as its model.py reads them.
    The one model holds several steps' parameters: a key two of them share must mean one value."""
    for key, text in params.to_config().items():
        if key in config.parameters and config.parameters[key].string_value != text:
            raise ConfigError(f"{config.name}: parameter {key!r} is {config.parameters[key].string_value!r} for one "
                              f"step and {text!r} for {type(params).__name__}")
        config.parameters[key].string_value = text


def queue_policy(spec: DeploymentSpec) -> mc.ModelQueuePolicy | None:
    """The bounded queue from ``[batching]``: reject (never delay) what does not fit or waited
    too long, so that overload is answered fast with UNAVAILABLE instead of piling up.
    ``None`` when the spec asks for Triton's unbounded default."""
    b = spec.batching
    if not b.max_queue_size and not b.queue_timeout_microseconds:
        return None
    return mc.ModelQueuePolicy(
        timeout_action=mc.ModelQueuePolicy.REJECT,
        default_timeout_microseconds=b.queue_timeout_microseconds,
        max_queue_size=b.max_queue_size,
    )


def _dynamic_batching(spec: DeploymentSpec, preferred: bool, bounded: bool = False) -> mc.ModelDynamicBatching:
    """``bounded`` adds the spec's queue policy. The ensemble has no scheduler queue of its
    own, so the policy goes on its entry models (tokenizer and encoder): a request beyond
    capacity is turned away before any expensive work, and a request the tokenizer let in
    cannot pile up unboundedly in front of the encoder."""
    b = spec.batching
    batching = mc.ModelDynamicBatching(max_queue_delay_microseconds=b.max_queue_delay_microseconds)
    if preferred and b.preferred_batch_sizes:
        batching.preferred_batch_size.extend(b.preferred_batch_sizes)
    policy = queue_policy(spec) if bounded else None
    if policy is not None:
        batching.default_queue_policy.CopyFrom(policy)
    return batching


def _cpu_instances(count: int = 1) -> list[mc.ModelInstanceGroup]:
    return [mc.ModelInstanceGroup(kind=mc.ModelInstanceGroup.KIND_CPU, count=count)]


#: rate-limiter priorities of a one-model deployment's preferred instance and of the rest
HOT_PRIORITY, POOL_PRIORITY = 1, 1_000_000


def preferred_instances(name: str, kind, count: int) -> list[mc.ModelInstanceGroup]:
    """``count`` instances as one preferred instance (``<name>_hot``) and a pool of the rest.

    Triton started with ``--rate-limit=execution_count`` (the embedded server and the images do)
    hands a batch to the ready instance of least executions x priority (core r24.10,
    rate_limiter.cc), so an idle server keeps one warm process, CUDA context and cache, and the
    pool takes what arrives while it is busy. Without it idle instances wake in turn and single
    requests rotate over every process: measured on an H200 (bench/gpu/run_hot_ab.sh, 8
    instances, two rounds), c=1 p50 2.13 / 2.11 ms rotating against 1.67 / 1.40 ms, the same
    peak within noise. A server without the flag ignores the priorities."""
    if count <= 1:
        return [mc.ModelInstanceGroup(kind=kind, count=count)]
    return [mc.ModelInstanceGroup(name=hot_group(name), kind=kind, count=1,
                                  rate_limiter=mc.ModelRateLimiter(priority=HOT_PRIORITY)),
            mc.ModelInstanceGroup(name=pool_group(name), kind=kind, count=count - 1,
                                  rate_limiter=mc.ModelRateLimiter(priority=POOL_PRIORITY))]


def encoder_input_decls(manifest: ExportManifest) -> tuple[TensorDecl, ...]:
    return tuple(d for d in ENCODER_INPUT_DECLS if d.name in manifest.inputs)


def encoder_output_decl(spec: DeploymentSpec, manifest: ExportManifest) -> TensorDecl:
    decl = get_task(spec.task).encoder_output(manifest.hidden_size, manifest.num_labels)
    if decl.name != manifest.output:
        raise ConfigError(f"{spec.name}: export produced output {manifest.output!r}, task expects {decl.name!r}")
    return decl


def ensemble_output_decls(spec: DeploymentSpec, manifest: ExportManifest) -> tuple[TensorDecl, ...]:
    return get_task(spec.task).ensemble_outputs(manifest.hidden_size, manifest.num_labels)


def window_decls(spec: DeploymentSpec) -> tuple[TensorDecl, ...]:
    """Tokenizer -> postprocess tensors beside the encoder's (the windowed tasks only)."""
    return WINDOW_DECLS if get_task(spec.task).windowed else ()


def postprocess_input_decls(spec: DeploymentSpec, manifest: ExportManifest) -> tuple[TensorDecl, ...]:
    task = get_task(spec.task)
    token_ids = tuple(d for d in encoder_input_decls(manifest) if d.name == contract.INPUT_IDS)
    return (encoder_output_decl(spec, manifest), *window_decls(spec),
            *(token_ids if task.postprocess_reads_token_ids else ()))


def _window_parameters(spec: DeploymentSpec) -> dict:
    """The windowed task's tokenizer parameters (none for the other tasks)."""
    w = spec.windows
    if w is None:
        return {}
    qa = isinstance(w, QASpec)
    return {"task": spec.task, "stride": window_stride(w), "max_windows": w.max_windows,
            "max_question_length": w.max_question_length if qa else 0, "align_to_words": qa and w.align_to_words}


def tokenizer_config(spec: DeploymentSpec, manifest: ExportManifest, variant: str) -> mc.ModelConfig:
    config = mc.ModelConfig(
        name=spec.tokenizer_model,
        backend="python",
        max_batch_size=spec.batching.max_batch_size,
        input=_inputs(get_task(spec.task).ensemble_inputs),
        output=_outputs((*encoder_input_decls(manifest), *window_decls(spec))),
        dynamic_batching=_dynamic_batching(spec, preferred=False, bounded=True),
        instance_group=_cpu_instances(host_sized(spec, variant, "tokenizer_instances")),
    )
    _parameters(config, tokenizer_parameters(spec, manifest))
    return config


def tokenizer_parameters(spec: DeploymentSpec, manifest: ExportManifest) -> TokenizerParameters:
    """The served tokenizer's parameters (also what the fidelity report tokenizes with)."""
    return TokenizerParameters(
        tokenizer_file=TOKENIZER_FILE,
        max_sequence_length=spec.model.max_sequence_length,
        length_buckets=tuple(spec.model.length_buckets),
        pad_token_id=manifest.pad_token_id,
        max_request_text_bytes=spec.batching.max_request_text_bytes,
        max_request_texts=spec.batching.max_request_texts,
        **_window_parameters(spec),
    )


def encoder_config(spec: DeploymentSpec, manifest: ExportManifest, variant: str) -> mc.ModelConfig:
    engine = spec.engine(variant)
    config = mc.ModelConfig(
        name=spec.encoder_model,
        max_batch_size=encoder_max_batch_size(spec),
        input=_inputs(encoder_input_decls(manifest)),
        output=_outputs([encoder_output_decl(spec, manifest)]),
        dynamic_batching=_dynamic_batching(spec, preferred=True, bounded=True),
    )
    if engine.backend == "onnxruntime":
        # The embedded server has no onnxruntime backend: ONNX Runtime runs in a Python model.
        config.backend = "python"
        config.instance_group.extend(_cpu_instances(host_sized(spec, variant, "instance_count")))
        _parameters(config, _onnx_parameters(spec, variant))
        # Requests padded to different length buckets may share an execution: otherwise the
        # dynamic batcher closes a batch at every change of shape and batches stay near one
        # request.
        _allow_ragged(config)
    elif engine.backend == "tensorrt":
        config.platform = "tensorrt_plan"
        config.default_model_filename = PLAN_FILE
        config.instance_group.append(
            mc.ModelInstanceGroup(kind=mc.ModelInstanceGroup.KIND_GPU, count=host_sized(spec, variant, "instance_count"))
        )
    elif engine.backend == "torch":
        _torch_encoder(config, spec, variant)
    else:
        raise ConfigError(f"{spec.name}: no encoder config for engine backend {engine.backend!r}")
    return config


def _onnx_parameters(spec: DeploymentSpec, variant: str) -> OrtEncoderParameters:
    engine = spec.engine(variant)
    # merge_lengths: the class's default, "group" (the reason is documented on the field)
    return OrtEncoderParameters(onnx_file=ONNX_FILE, intra_op_threads=host_sized(spec, variant, "intra_op_threads"),
                                thread_spinning=thread_spinning(spec, variant), precision=engine.precision,
                                # the preferred instance's (core.instances.has_hot_instance)
                                hot_intra_op_threads=host_sized(spec, variant, "hot_intra_op_threads"),
                                hot_thread_spinning=thread_spinning(spec, variant, hot=True),
                                solo_intra_op_threads=host_sized(spec, variant, "solo_intra_op_threads"),
                                # windows: a request may bring max_windows rows; attention memory grows
                                # with rows x length^2
                                max_rows_per_run=spec.batching.max_batch_size if spec.windows is not None else 0)


def _torch_parameters(spec: DeploymentSpec, variant: str) -> TorchEncoderParameters:
    engine = spec.engine(variant)
    batch_sizes = engine.cuda_graph_batch_sizes or default_graph_batch_sizes(
        encoder_max_batch_size(spec), spec.batching.preferred_batch_sizes)
    # output_device, FORCE_CPU_ONLY_INPUT_TENSORS and merge_lengths: the class's defaults
    # (what the GPU engine wants; the reasons are documented on the fields).
    fused = engine.engine_format in FUSED_FORMATS
    name = fused_engine_name(engine.engine_format) if fused else TORCHSCRIPT_FILE
    return TorchEncoderParameters(
        torchscript_file=name,
        full_rows_file=full_rows_path(name).name if fused else "",
        precision=engine.precision,
        attention=engine.attention,
        cuda_graphs=engine.cuda_graphs,
        cuda_graph_batch_sizes=tuple(batch_sizes),
        cuda_graph_sequence_lengths=tuple(spec.model.length_buckets),
    )


def _torch_encoder(config: mc.ModelConfig, spec: DeploymentSpec, variant: str) -> None:
    """The torch backend: TorchScript + CUDA graphs in a Python model on the GPU (torch_engine.py)."""
    config.backend = "python"
    config.instance_group.append(
        mc.ModelInstanceGroup(kind=mc.ModelInstanceGroup.KIND_GPU, count=host_sized(spec, variant, "instance_count"))
    )
    _parameters(config, _torch_parameters(spec, variant))
    # Requests padded to different length buckets may share an execution: without this the
    # dynamic batcher closes a batch at every change of shape, and with four buckets in random
    # order batches stayed at 1.6 requests on an H200 (docs/results/gpu/).
    _allow_ragged(config)


def _allow_ragged(config: mc.ModelConfig) -> None:
    for tensor in config.input:
        tensor.allow_ragged_batch = True


def postprocess_config(spec: DeploymentSpec, manifest: ExportManifest, variant: str) -> mc.ModelConfig:
    config = mc.ModelConfig(
        name=spec.postprocess_model,
        backend="python",
        max_batch_size=encoder_max_batch_size(spec),
        input=_inputs(postprocess_input_decls(spec, manifest)),
        output=_outputs(ensemble_output_decls(spec, manifest)),
        dynamic_batching=_dynamic_batching(spec, preferred=False),
        instance_group=_cpu_instances(host_sized(spec, variant, "postprocess_instances")),
    )
    _parameters(config, postprocess_parameters(spec))
    return config


def postprocess_parameters(spec: DeploymentSpec) -> PostprocessParameters:
    """The served postprocess's parameters (also what the fidelity report scores with)."""
    w = spec.windows
    extra: dict = {}
    if isinstance(w, QASpec):
        extra = {"n_best": w.n_best, "max_answer_length": w.max_answer_length,
                 "handle_impossible_answer": w.handle_impossible_answer, "align_to_words": w.align_to_words}
    elif isinstance(w, NERSpec):
        extra = {"aggregation_strategy": w.aggregation_strategy, "tokenizer_file": TOKENIZER_FILE}
    return PostprocessParameters(task=spec.task, labels=tuple(spec.model.labels), **extra)


def pipeline_config(spec: DeploymentSpec, manifest: ExportManifest, variant: str) -> mc.ModelConfig:
    """The single topology: ``<name>`` is one Python model (trtserve_backend.pipeline) with the
    ensemble's name, inputs, outputs and bounded queue, and the three steps' typed parameters;
    the tensors the ensemble wires from its tokenizer to its postprocess (the windowed tasks'
    spans, window -> item map, item texts, token ids) are named as the pipeline's side inputs."""
    engine = spec.engine(variant)
    gpu = engine.backend == "torch"
    kind = mc.ModelInstanceGroup.KIND_GPU if gpu else mc.ModelInstanceGroup.KIND_CPU
    encoder_out = encoder_output_decl(spec, manifest)
    config = mc.ModelConfig(
        name=spec.name,
        backend="python",
        max_batch_size=spec.batching.max_batch_size,
        input=_inputs(get_task(spec.task).ensemble_inputs),
        output=_outputs(ensemble_output_decls(spec, manifest)),
        dynamic_batching=_dynamic_batching(spec, preferred=True, bounded=True),
        instance_group=preferred_instances(spec.name, kind, host_sized(spec, variant, "instance_count")),
    )
    side = tuple(d.name for d in postprocess_input_decls(spec, manifest) if d.name != encoder_out.name)
    for params in (tokenizer_parameters(spec, manifest),
                   _torch_parameters(spec, variant) if gpu else _onnx_parameters(spec, variant),
                   postprocess_parameters(spec),
                   PipelineParameters(engine_backend=engine.backend,
                                      encoder_inputs=tuple(d.name for d in encoder_input_decls(manifest)),
                                      encoder_output=encoder_out.name, side_inputs=side,
                                      idle_poll_ms=engine.idle_poll_ms)):
        _parameters(config, params)
    return config


def ensemble_config(spec: DeploymentSpec, manifest: ExportManifest) -> mc.ModelConfig:
    """TEXT (QUESTION, CONTEXT) -> tokenizer -> encoder -> postprocess; internal tensors keep
    their own names. The windowed tasks' tokenizer also feeds the postprocess directly."""
    inputs = encoder_input_decls(manifest)
    encoder_out = encoder_output_decl(spec, manifest)
    outputs = ensemble_output_decls(spec, manifest)
    public = get_task(spec.task).ensemble_inputs
    to_postprocess = postprocess_input_decls(spec, manifest)
    step = mc.ModelEnsembling.Step
    config = mc.ModelConfig(
        name=spec.name,
        platform="ensemble",
        max_batch_size=spec.batching.max_batch_size,
        input=_inputs(public),
        output=_outputs(outputs),
        ensemble_scheduling=mc.ModelEnsembling(step=[
            step(model_name=spec.tokenizer_model, model_version=-1,
                 input_map={d.name: d.name for d in public},
                 output_map={d.name: d.name for d in (*inputs, *window_decls(spec))}),
            step(model_name=spec.encoder_model, model_version=-1,
                 input_map={d.name: d.name for d in inputs},
                 output_map={encoder_out.name: encoder_out.name}),
            step(model_name=spec.postprocess_model, model_version=-1,
                 input_map={d.name: d.name for d in to_postprocess},
                 output_map={d.name: d.name for d in outputs}),
        ]),
    )
    return config


def deployment_configs(spec: DeploymentSpec, manifest: ExportManifest, variant: str) -> list[mc.ModelConfig]:
    """All configs of one deployment: the one model (single topology), or the ensemble first and its three steps."""
    if spec.topology(variant) == "single":
        return [pipeline_config(spec, manifest, variant)]
    return [
        ensemble_config(spec, manifest),
        tokenizer_config(spec, manifest, variant),
        encoder_config(spec, manifest, variant),
        postprocess_config(spec, manifest, variant),
    ]
