"""Triton model configs, built as ``ModelConfig`` protobufs from the spec; never from templates.

Each function returns a ``model_config_pb2.ModelConfig``; :func:`write_config` serializes it
with ``text_format`` and :func:`read_config` parses a config.pbtxt back (protobuf rejects
unknown fields), so tests can round-trip every generated file.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from trtserve_backend import contract

from .export import ONNX_FILE, TOKENIZER_FILE, ExportManifest
from .spec import AUTO, DeploymentSpec
from .tasks import ENCODER_INPUT_DECLS, TEXT_DECL, TensorDecl, get_task

PLAN_FILE = "model.plan"
#: The torch backend's traced encoder (trtserve_build.torchscript) inside the version folder.
TORCHSCRIPT_FILE = "model.pt"
PYTHON_MODEL_FILE = "model.py"


class ConfigError(ValueError):
    """A generated or parsed config is inconsistent."""


def _tensor(cls, decl: TensorDecl):
    return cls(name=decl.name, data_type=mc.DataType.Value(decl.dtype), dims=list(decl.dims))


def _inputs(decls: Iterable[TensorDecl]):
    return [_tensor(mc.ModelInput, d) for d in decls]


def _outputs(decls: Iterable[TensorDecl]):
    return [_tensor(mc.ModelOutput, d) for d in decls]


def _parameters(config: mc.ModelConfig, values: dict[str, object]) -> None:
    for key, value in values.items():
        text = value if isinstance(value, str) else json.dumps(value)
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


def host_sized(spec: DeploymentSpec, variant: str, knob: str, cores: int | None = None) -> int:
    """An instance knob of ``[engine.<variant>]``, with "auto" sized from the host's cores.

    The repository is generated on the host that serves it (``make serve``), so its cores are
    the serving host's. "auto": the one model (single topology) on a GPU gets cores/2 instances
    (up to 8: tokenizing and postprocessing are per-request CPU work, the GPU is shared);
    an ONNX Runtime engine one instance per 8 cores with cores/instances intra-op threads (one
    ONNX Runtime run is parallel inside, so few wide instances); tokenizer and postprocess steps
    one instance per 4 cores (up to 8).
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
    if engine.backend == "torch" and spec.topology(variant) == "single":
        return max(1, min(8, cores // 2))
    return max(1, min(2, cores // 8))


def _cpu_instances(count: int = 1) -> list[mc.ModelInstanceGroup]:
    return [mc.ModelInstanceGroup(kind=mc.ModelInstanceGroup.KIND_CPU, count=count)]


def encoder_input_decls(manifest: ExportManifest) -> tuple[TensorDecl, ...]:
    return tuple(d for d in ENCODER_INPUT_DECLS if d.name in manifest.inputs)


def encoder_output_decl(spec: DeploymentSpec, manifest: ExportManifest) -> TensorDecl:
    decl = get_task(spec.task).encoder_output(manifest.hidden_size, manifest.num_labels)
    if decl.name != manifest.output:
        raise ConfigError(f"{spec.name}: export produced output {manifest.output!r}, task expects {decl.name!r}")
    return decl


def ensemble_output_decls(spec: DeploymentSpec, manifest: ExportManifest) -> tuple[TensorDecl, ...]:
    return get_task(spec.task).ensemble_outputs(manifest.hidden_size, manifest.num_labels)


def tokenizer_config(spec: DeploymentSpec, manifest: ExportManifest, variant: str) -> mc.ModelConfig:
    config = mc.ModelConfig(
        name=spec.tokenizer_model,
        backend="python",
        max_batch_size=spec.batching.max_batch_size,
        input=_inputs([TEXT_DECL]),
        output=_outputs(encoder_input_decls(manifest)),
        dynamic_batching=_dynamic_batching(spec, preferred=False, bounded=True),
        instance_group=_cpu_instances(host_sized(spec, variant, "tokenizer_instances")),
    )
    _parameters(config, _tokenizer_parameters(spec, manifest))
    return config


def _tokenizer_parameters(spec: DeploymentSpec, manifest: ExportManifest) -> dict[str, object]:
    return {
        "tokenizer_file": TOKENIZER_FILE,
        "max_sequence_length": str(spec.model.max_sequence_length),
        "length_buckets": list(spec.model.length_buckets),
        "pad_token_id": str(manifest.pad_token_id),
    }


def encoder_config(spec: DeploymentSpec, manifest: ExportManifest, variant: str) -> mc.ModelConfig:
    engine = spec.engine(variant)
    config = mc.ModelConfig(
        name=spec.encoder_model,
        max_batch_size=spec.batching.max_batch_size,
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
            mc.ModelInstanceGroup(kind=mc.ModelInstanceGroup.KIND_GPU,
                                  count=host_sized(spec, variant, "instance_count"))
        )
    elif engine.backend == "torch":
        _torch_encoder(config, spec, variant)
    else:
        raise ConfigError(f"{spec.name}: no encoder config for engine backend {engine.backend!r}")
    return config


def _onnx_parameters(spec: DeploymentSpec, variant: str) -> dict[str, object]:
    return {
        "onnx_file": ONNX_FILE,
        "intra_op_threads": str(host_sized(spec, variant, "intra_op_threads")),
        "precision": spec.engine(variant).precision,
        # One ONNX Runtime batch per length bucket in an execution. On the CPU, compute grows
        # with the padded tokens; padding every request to the longest ("pad", what the GPU
        # engine does to replay one CUDA graph) did not serve more texts/s on 2 cores.
        "merge_lengths": "group",
    }


def _torch_parameters(spec: DeploymentSpec, variant: str) -> dict[str, object]:
    from trtserve_backend.torch_engine import default_graph_batch_sizes

    engine = spec.engine(variant)
    batch_sizes = engine.cuda_graph_batch_sizes or default_graph_batch_sizes(
        spec.batching.max_batch_size, spec.batching.preferred_batch_sizes)
    return {
        "torchscript_file": TORCHSCRIPT_FILE,
        "precision": engine.precision,
        "attention": engine.attention,
        "cuda_graphs": engine.cuda_graphs,
        # One graph per (batch size, tokenizer length bucket): every shape the tokenizer sends.
        "cuda_graph_batch_sizes": list(batch_sizes),
        "cuda_graph_sequence_lengths": list(spec.model.length_buckets),
        # The requests of one execution, padded to the longest of them, run as one batch.
        "merge_lengths": "pad",
    }


def _torch_encoder(config: mc.ModelConfig, spec: DeploymentSpec, variant: str) -> None:
    """The torch backend: TorchScript + CUDA graphs in a Python model on the GPU (torch_engine.py)."""
    config.backend = "python"
    config.instance_group.append(
        mc.ModelInstanceGroup(kind=mc.ModelInstanceGroup.KIND_GPU, count=host_sized(spec, variant, "instance_count"))
    )
    _parameters(config, {
        **_torch_parameters(spec, variant),
        # The output leaves the encoder on the GPU through DLPack; Triton copies it for the CPU
        # postprocess. "cpu" copies it inside the encoder instead: on an H200 the two were within
        # 0.1 ms at one client and within the +-15% spread between server runs at 16-64 clients.
        "output_device": "gpu",
        # Let Triton hand GPU-resident inputs over as they are (DLPack), not staged to the CPU.
        "FORCE_CPU_ONLY_INPUT_TENSORS": "no",
    })
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
        max_batch_size=spec.batching.max_batch_size,
        input=_inputs([encoder_output_decl(spec, manifest)]),
        output=_outputs(ensemble_output_decls(spec, manifest)),
        dynamic_batching=_dynamic_batching(spec, preferred=False),
        instance_group=_cpu_instances(host_sized(spec, variant, "postprocess_instances")),
    )
    _parameters(config, _postprocess_parameters(spec))
    return config


def _postprocess_parameters(spec: DeploymentSpec) -> dict[str, object]:
    params: dict[str, object] = {"task": spec.task}
    if spec.model.labels:
        params["labels"] = list(spec.model.labels)
    return params


def pipeline_config(spec: DeploymentSpec, manifest: ExportManifest, variant: str) -> mc.ModelConfig:
    """The single topology: ``<name>`` is one Python model (trtserve_backend.pipeline) with the
    ensemble's name, input and outputs, and the three steps' parameters."""
    engine = spec.engine(variant)
    gpu = engine.backend == "torch"
    config = mc.ModelConfig(
        name=spec.name,
        backend="python",
        max_batch_size=spec.batching.max_batch_size,
        input=_inputs([TEXT_DECL]),
        output=_outputs(ensemble_output_decls(spec, manifest)),
        dynamic_batching=_dynamic_batching(spec, preferred=True, bounded=True),
        instance_group=[mc.ModelInstanceGroup(
            kind=mc.ModelInstanceGroup.KIND_GPU if gpu else mc.ModelInstanceGroup.KIND_CPU,
            count=host_sized(spec, variant, "instance_count"))],
    )
    _parameters(config, {
        **_tokenizer_parameters(spec, manifest),
        **(_torch_parameters(spec, variant) if gpu else _onnx_parameters(spec, variant)),
        **_postprocess_parameters(spec),
        "engine_backend": engine.backend,
        "encoder_inputs": [d.name for d in encoder_input_decls(manifest)],
        "encoder_output": encoder_output_decl(spec, manifest).name,
    })
    return config


def ensemble_config(spec: DeploymentSpec, manifest: ExportManifest) -> mc.ModelConfig:
    """TEXT -> tokenizer -> encoder -> postprocess; internal tensors keep their own names."""
    inputs = encoder_input_decls(manifest)
    encoder_out = encoder_output_decl(spec, manifest)
    outputs = ensemble_output_decls(spec, manifest)
    step = mc.ModelEnsembling.Step
    config = mc.ModelConfig(
        name=spec.name,
        platform="ensemble",
        max_batch_size=spec.batching.max_batch_size,
        input=_inputs([TEXT_DECL]),
        output=_outputs(outputs),
        ensemble_scheduling=mc.ModelEnsembling(step=[
            step(model_name=spec.tokenizer_model, model_version=-1,
                 input_map={TEXT_DECL.name: TEXT_DECL.name},
                 output_map={d.name: d.name for d in inputs}),
            step(model_name=spec.encoder_model, model_version=-1,
                 input_map={d.name: d.name for d in inputs},
                 output_map={encoder_out.name: encoder_out.name}),
            step(model_name=spec.postprocess_model, model_version=-1,
                 input_map={encoder_out.name: encoder_out.name},
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


def to_text(config: mc.ModelConfig) -> str:
    return text_format.MessageToString(config)


def write_config(config: mc.ModelConfig, path: Path) -> None:
    path.write_text(to_text(config))


def read_config(path: Path) -> mc.ModelConfig:
    """Parse a config.pbtxt; unknown fields raise ``text_format.ParseError``."""
    return text_format.Parse(Path(path).read_text(), mc.ModelConfig())
