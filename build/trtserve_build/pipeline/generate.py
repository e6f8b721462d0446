"""Generation orchestration: one ``generate`` model folder from typed settings (tests, the GPU
benchmark), the decoder's TensorRT plan (context and decode profiles) and the GPT-2 fidelity rows (every precision of the precision stage against the FP32 graph, real text
and random ids side by side).

The export (trained checkpoint first, when the spec says so), the precision graphs (int8:
calibrated on the training split's prompts, tokenized as the ``generate`` model does) and the
executors are the ones every deployment uses (pipeline/steps.py, pipeline/validate.py).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import trtserve_contract as contract

from ..core.enums import TRANSFORMED_PRECISIONS
from ..core.host import cpu_model
from ..core.lazy import lazy_import
from ..core.paths import ONNX_FILE, TOKENIZER_FILE, export_dir, plan_path
from ..core.records import EngineRecord
from ..core.spec import DeploymentSpec
from ..core.task_spec import decoder_profiles
from ..data.texts import dataset_split
from ..data.tokenizer import prompt_feeds
from ..runtime.onnxruntime import OrtExecutor
from ..runtime.tensorrt import TensorRTFlavour
from ..stages import decoder_fidelity
from ..stages import repository as repository_stage
from ..stages import tensorrt as tensorrt_stage
from ..stages.generate_config import GenerateSettings, generate_config
from .steps import export, precision_graph
from .validate import choose_executor

onnx = lazy_import("onnx")
tokenizers = lazy_import("tokenizers")

log = logging.getLogger(__name__)

#: Prompt-step windows per engine call in the fidelity runs.
CHUNK = 8


def write_generate(root: Path, engine_file: Path, tokenizer_dir: Path, settings: GenerateSettings,
                   name: str = "generate") -> Path:
    """``<root>/<name>``: a ``generate`` model over ``engine_file`` (the ONNX export for engine
    onnxruntime, the checkpoint folder for torch) with ``tokenizer_dir``'s tokenizer.json."""
    return repository_stage.write_generate_model(root, generate_config(settings, name), Path(engine_file),
                                                 Path(tokenizer_dir) / TOKENIZER_FILE)


def decoder_input_profiles(spec: DeploymentSpec, onnx_path: Path) -> list[dict[str, tuple]]:
    """The [context, decode] profiles for the decoder graph at ``onnx_path`` (layers, heads and
    head size read from its past key/value inputs)."""
    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    past = [i for i in graph.input if i.name.startswith("past_key_values.") and i.name.endswith(".key")]
    dims = [d.dim_value for d in past[0].type.tensor_type.shape.dim]
    return decoder_profiles(spec, layers=len(past), heads=dims[1], head_dim=dims[3])


def build_decoder_plan(spec: DeploymentSpec, onnx_path: Path | None = None, plan: Path | None = None,
                       precision: str = "fp32", *, flavour: TensorRTFlavour | None = None,
                       compute_capabilities: Sequence[str] | None = None) -> EngineRecord:
    """A TensorRT plan of the decoder graph (default: the spec's export of ``precision``) with the
    context and decode profiles; the record beside it like every plan's."""
    onnx_path = Path(onnx_path or precision_graph(spec, precision))
    plan = Path(plan or plan_path(spec, precision))
    return tensorrt_stage.build_plan(onnx_path, plan, spec, precision, flavour=flavour,
                                     compute_capabilities=compute_capabilities,
                                     input_profiles=decoder_input_profiles(spec, onnx_path))


def real_windows(spec: DeploymentSpec, windows: int, length: int) -> np.ndarray:
    """``windows`` x ``length`` token ids of held-out text (the split the default model never saw;
    EOS between texts), tokenized as the ``generate`` model does."""
    dataset = spec.training.dataset if spec.training is not None else spec.precision.calibration_dataset
    _, held = dataset_split(spec, dataset)
    tok = tokenizers.Tokenizer.from_file(str(export_dir(spec) / TOKENIZER_FILE))
    stream: list[int] = []
    for row in held:
        stream += tok.encode(row.text, add_special_tokens=False).ids + [spec.generation.eos_token_id]
    need = windows * length
    if len(stream) < need:
        raise ValueError(f"{spec.name}: {len(stream)} held-out tokens, {need} needed")
    return np.asarray(stream[:need], np.int64).reshape(windows, length)


def _logits(executor, ids: np.ndarray, geometry: dict[str, int]) -> np.ndarray:
    return np.concatenate([np.asarray(executor.infer(prompt_feeds(ids[i:i + CHUNK], geometry))[0])
                           for i in range(0, len(ids), CHUNK)])


def run_fidelity(spec: DeploymentSpec, precisions: Sequence[str] = TRANSFORMED_PRECISIONS, *, windows: int = 64,
                 length: int = 64, seed: int = 0) -> dict:
    """The fidelity rows of ``spec``'s decoder (exported, and trained first when needed): each
    precision's graph against the FP32 graph under ONNX Runtime, on real and random windows."""
    manifest = export(spec)
    geometry = manifest.geometry
    vocab = geometry["vocab_size"]
    inputs = {"real text (held-out reviews)": real_windows(spec, windows, length),
              "random token ids": np.random.default_rng(seed).integers(0, vocab, (windows, length))}
    reference = OrtExecutor(export_dir(spec) / ONNX_FILE)
    references = {name: _logits(reference, ids, geometry) for name, ids in inputs.items()}
    reference.close()
    rows, notes = [], []
    for precision in precisions:
        executor, refused = choose_executor(precision_graph(spec, precision), allow_tensorrt=False)
        notes += [f"{precision}: {why}" for why in refused]
        for name, ids in inputs.items():
            row = decoder_fidelity.compare(references[name], _logits(executor, ids, geometry),
                                           ids if name.startswith("real") else None)
            rows.append({"precision": precision, "inputs": name, **row, "executor": executor.label})
            log.info("%s", rows[-1])
        executor.close()
    return {"model": spec.name, "checkpoint": manifest.checkpoint, "windows": windows, "length": length,
            "machine": cpu_model(), "reference": "FP32 graph, ONNX Runtime",
            "variants": "the precision stage's graphs (int8: Q/DQ, calibrated), best faithful executor", "rows": rows,
            "notes": sorted(set(notes)), "logits": contract.LOGITS}
