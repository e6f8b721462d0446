"""A TensorRT plan of the GPT-2 decoder graph with two optimization profiles: context and decode.

- context (profile 0): the prompt step, ``input_ids``/``position_ids`` [1..B, 1..max_prompt],
  ``attention_mask`` [1..B, 1..max_prompt], past key/values of length 0;
- decode (profile 1): one token per sequence, ``input_ids``/``position_ids`` [1..B, 1],
  ``attention_mask`` [1..B, 2..context], past key/values [1..B, heads, 1..context-1, head_dim].

Built through the TensorRT Python API with the installed flavour (full ``tensorrt`` in the NGC
container; ``tensorrt_rtx`` builds real plans on a CPU-only machine, which ``make test`` does).
Beside the plan, a JSON record: flavour, version, profiles, ONNX and plan sha256, build seconds.
"""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import trtserve_contract as contract
from trtserve_backend.generation.requests import GenerationLimits


class DecoderPlanError(RuntimeError):
    """TensorRT could not parse or build the decoder; the message carries its errors."""


def decoder_profiles(limits: GenerationLimits, layers: int, heads: int, head_dim: int, max_batch: int) -> list[dict]:
    """[context, decode]: input name -> (min, opt, max) shapes."""
    ctx, prompt = limits.context_length, limits.max_prompt_tokens
    opt_prompt = max(1, prompt // 2)
    context = {contract.INPUT_IDS: ((1, 1), (1, opt_prompt), (max_batch, prompt)),
               contract.POSITION_IDS: ((1, 1), (1, opt_prompt), (max_batch, prompt)),
               contract.ATTENTION_MASK: ((1, 1), (1, opt_prompt), (max_batch, prompt))}
    decode = {contract.INPUT_IDS: ((1, 1), (max_batch, 1), (max_batch, 1)),
              contract.POSITION_IDS: ((1, 1), (max_batch, 1), (max_batch, 1)),
              contract.ATTENTION_MASK: ((1, 2), (max_batch, ctx // 2), (max_batch, ctx))}
    for i in range(layers):
        for name in (contract.past_key_name(i), contract.past_value_name(i)):
            context[name] = ((1, heads, 0, head_dim), (1, heads, 0, head_dim), (max_batch, heads, 0, head_dim))
            decode[name] = ((1, heads, 1, head_dim), (max_batch, heads, ctx // 2 - 1, head_dim),
                            (max_batch, heads, ctx - 1, head_dim))
    return [context, decode]


def build_decoder_plan(onnx_path: Path, plan_path: Path, profiles: list[dict]) -> dict:
    """Parse, add ``profiles``, build, write the plan and its record; returns the record."""
    from trtserve_build.runtime.tensorrt import detect_tensorrt

    flavour = detect_tensorrt()
    trt = flavour.module
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [parser.get_error(i).desc() for i in range(parser.num_errors)]
        raise DecoderPlanError(f"{onnx_path}: TensorRT could not parse the decoder: {errors}")
    config = builder.create_builder_config()
    names = [network.get_input(i).name for i in range(network.num_inputs)]
    for shapes in profiles:
        missing = sorted(set(names) - set(shapes))
        if missing:
            raise DecoderPlanError(f"profile lacks shapes for inputs {missing}")
        profile = builder.create_optimization_profile()
        for name in names:
            profile.set_shape(name, *shapes[name])
        if config.add_optimization_profile(profile) < 0:
            raise DecoderPlanError(f"TensorRT rejected the profile {shapes}")
    started = time.monotonic()
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise DecoderPlanError(f"{onnx_path}: TensorRT ({flavour.name} {flavour.version}) built no plan")
    data = bytes(plan)
    plan_path = Path(plan_path)
    plan_path.parent.mkdir(parents=True, exist_ok=True)
    plan_path.write_bytes(data)
    record = {"flavour": flavour.name, "version": flavour.version, "onnx": str(onnx_path),
              "onnx_sha256": hashlib.sha256(Path(onnx_path).read_bytes()).hexdigest(),
              "plan_sha256": hashlib.sha256(data).hexdigest(), "plan_bytes": len(data),
              "build_seconds": round(time.monotonic() - started, 2),
              "profiles": [{"name": n, **{k: list(map(list, v)) for k, v in p.items()}}
                           for n, p in zip(("context", "decode"), profiles)]}
    plan_path.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    return record
