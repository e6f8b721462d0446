"""Engine stage of the ``torch`` backend: the exported task module -> TorchScript in fp32/fp16/hybrid.

The traced module computes what the ONNX export holds (classification logits, or mean pooling
over the attention mask for embeddings) with the same inputs and an FP32 output, so the ensemble
contract, tokenizer and postprocess do not change. Precision modes:

``fp32``    the checkpoint as is.
``fp16``    every weight and activation in FP16; the task output is cast to FP32 (pooling runs
            in FP32 too: a sum over 256 tokens loses digits in FP16).
``hybrid``  ``fp16`` with LayerNorm in FP32 (FP32 weights, input cast up, output cast down) and
            the attention softmax in FP32: with ``attention = "sdpa"`` PyTorch's fused attention
            kernels keep the softmax in FP32 registers; with ``attention = "eager"`` an eager
            attention function computes scores + mask and the softmax in FP32.

Every build is checked twice on real text: the traced module against the same module run
eagerly (tracing must not change the computation: a mask branch frozen at trace time would show
here), and against the FP32 module (the spec's precision gates). The numbers go into a record
beside the file and into the TorchScript archive itself (``trtserve.json``), which the serving
side reads.

Traced graphs pin the device they were traced on (transformers creates masks and positions with
``device=...``), so the build traces on the GPU when there is one; on a CPU-only build host it
traces and checks on the CPU, then retargets the graph's device constants to ``cuda``.

Usage (random weights from a config.json, as the GPU benchmark does)::

    trtserve-build torchscript --config config.json --task classification \\
        --precision fp16 --out /tmp/model.pt
"""
from __future__ import annotations

import copy
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import trtserve_contract as contract
from trtserve_backend.programs import METADATA_FILE

from ..core.errors import TorchScriptError
from ..core.files import sha256_file
from ..core.lazy import lazy_import
from ..core.metrics import SANITY_MIN_COSINE, TRACE_MIN_COSINE, PrecisionGate, check_tolerance, gate_for  # noqa: F401 - re-exported
from ..core.paths import record_path
from ..core.records import TORCHSCRIPT_FORMAT_VERSION, TorchScriptRecord
from ..core.stamps import digest
from ..models.convert import convert
from ..models.heads import run_rows, task_module

torch = lazy_import("torch")
transformers = lazy_import("transformers")

log = logging.getLogger(__name__)



# ---- tracing --------------------------------------------------------------------------------

def example_inputs(input_names: Sequence[str], device, vocab_size: int, pad_token_id: int = 0,
                   batch: int = 2, seq: int = 16, seed: int = 0) -> tuple:
    """Random token ids with real padding in the second row, so no mask shortcut is traced."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(min(1000, vocab_size - 1), vocab_size, (batch, seq), generator=g)
    mask = torch.ones(batch, seq, dtype=torch.int64)
    mask[1:, seq // 2:] = 0
    ids[mask == 0] = pad_token_id
    tensors = {contract.INPUT_IDS: ids, contract.ATTENTION_MASK: mask,
               contract.TOKEN_TYPE_IDS: torch.zeros(batch, seq, dtype=torch.int64)}
    return tuple(tensors[n].to(device) for n in input_names)


def trace(module, example: tuple):
    with torch.no_grad():
        return torch.jit.trace(module, example, check_trace=False)


def _find_nodes(script_module, kind: str):
    """Every ``kind`` node in the graphs of a TorchScript module and its submodules."""
    for module in script_module.modules():
        try:
            graph = module.graph
        except RuntimeError:  # a submodule without a forward method
            continue
        yield from graph.findAllNodes(kind)


def retarget_device_constants(script_module, device_type: str) -> int:
    """Point every device constant in the traced graphs at ``device_type``; returns how many changed.

    Tensor weights and constants follow ``torch.jit.load(map_location=...)``; device constants
    (``arange(..., device=...)`` in mask code) do not, so a CPU trace is retargeted here, and a
    GPU trace loses its device index ("cuda:0" -> "cuda": the current device at run time).
    """
    changed = 0
    for node in _find_nodes(script_module, "prim::Constant"):
        if node.output().type().kind() == "DeviceObjType" and node.s("value") != device_type:
            node.s_("value", device_type)
            changed += 1
    return changed


def constant_copies(script_module) -> int:
    """How many ``aten::to`` nodes copy a tensor constant (made on the host at trace time).

    Each runs a host-to-device copy on every call of a GPU module, which CUDA graph capture
    refuses ("Cannot copy between CPU and CUDA tensors during CUDA graph capture").
    """
    count = 0
    for node in _find_nodes(script_module, "aten::to"):
        source = next(node.inputs()).node()
        if source.kind() == "prim::Constant" and source.output().type().kind() == "TensorType":
            count += 1
    return count


def device_constants(script_module) -> set[str]:
    """The device constants left in a traced module's graphs."""
    found = set()
    for node in _find_nodes(script_module, "prim::Constant"):
        if node.output().type().kind() == "DeviceObjType":
            found.add(node.s("value"))
    return found


# ---- checks ---------------------------------------------------------------------------------

# ---- one build ------------------------------------------------------------------------------

def make_torchscript(hf_model, task: str, precision: str, attention: str, input_names: Sequence[str],
                     check_feeds: dict[str, np.ndarray], gate: PrecisionGate, *, device: str | None = None,
                     target_device_type: str = "cuda", pad_token_id: int = 0):
    """Convert, trace and check one module; returns (ScriptModule, TorchScriptRecord without file fields).

    ``hf_model`` is an FP32 Hugging Face model (left unchanged). ``check_feeds`` are tokenized
    real texts ({input name: [n, seq] int64}), padded as the serving tokenizer pads them.
    """
    started = time.perf_counter()
    if device is None:
        device = target_device_type if target_device_type == "cuda" and torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    input_names = tuple(input_names)
    reference = task_module(copy.deepcopy(hf_model).float(), task, input_names).to(dev)
    candidate = task_module(convert(hf_model, precision, attention), task, input_names).to(dev)
    feeds = tuple(torch.from_numpy(np.ascontiguousarray(check_feeds[n])).to(dev, torch.int64) for n in input_names)

    expected = run_rows(reference, feeds)
    eager = run_rows(candidate, feeds)
    example = example_inputs(input_names, dev, int(hf_model.config.vocab_size), pad_token_id)
    traced = trace(candidate, example)
    traced_out = run_rows(traced, feeds)

    trace_check = check_tolerance(eager, traced_out, f"traced {precision} module vs the same module run eagerly",
                                  min_cosine=TRACE_MIN_COSINE)
    fp32_check = check_tolerance(expected, traced_out, f"traced {precision} module vs FP32", min_cosine=gate.min_cosine,
                                 max_nonfinite_fraction=gate.max_nonfinite_fraction, atol=gate.atol)

    # Always: a GPU trace names "cuda:0", which would pin masks to GPU 0 whatever GPU an instance
    # runs on; the bare type follows torch.cuda.set_device() of the serving instance.
    retargeted = retarget_device_constants(traced, target_device_type)
    copies = constant_copies(traced)
    if copies and target_device_type == "cuda":
        raise TorchScriptError(
            f"the traced {precision}/{attention} graph copies {copies} host constant(s) to the GPU on every call, "
            "which CUDA graph capture refuses; use attention = \"sdpa\" (or another transformers release)")
    left = device_constants(traced) - {target_device_type}
    if left:
        raise TorchScriptError(f"traced graph still names devices {sorted(left)} after retargeting to {target_device_type}")
    output = contract.LOGITS if task == contract.CLASSIFICATION else contract.POOLED
    record = TorchScriptRecord(
        task=task, precision=precision, attention=attention, inputs=input_names, output=output,
        trace_device_type=dev.type, target_device_type=target_device_type, retargeted_constants=retargeted,
        torch_version=torch.__version__, transformers_version=transformers.__version__,
        trace_vs_eager=asdict(trace_check), vs_fp32=asdict(fp32_check), gate=asdict(gate),
        checked_rows=len(expected), seconds=round(time.perf_counter() - started, 2),
    )
    log.info("traced %s/%s on %s: vs eager cos %.7f, vs fp32 cos %.6f max|diff| %.3g", precision, attention,
             dev.type, trace_check.min_cosine, fp32_check.min_cosine, fp32_check.max_abs_diff)
    return traced, record


def save(script_module, record: TorchScriptRecord, path: Path) -> Path:
    """Write the TorchScript file (record inside as trtserve.json) and its record beside it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.jit.save(script_module, str(tmp), _extra_files={METADATA_FILE: json.dumps(record.metadata())})
    tmp.chmod(0o644)
    tmp.replace(path)
    record.sha256 = sha256_file(path)
    record.write(record_path(path))
    return path


# ---- the pipeline stage ---------------------------------------------------------------------

def torchscript_fingerprint(spec, variant: str, export_fingerprint: str) -> str:
    engine = spec.engine(variant)
    return digest({"export": export_fingerprint, "precision": engine.precision, "attention": engine.attention,
                   "gate": asdict(gate_for(spec, engine.precision)), "torch": torch.__version__,
                   "format": TORCHSCRIPT_FORMAT_VERSION})


def build_torchscript(spec, variant: str, manifest, path: Path, *, load_model: Callable[[], object],
                      check_feeds: Callable[[], dict[str, np.ndarray]], force: bool = False) -> Path:
    """The ``torch`` backend's engine at ``path``, unless a current one is there: the FP32 Hugging
    Face model ``load_model()`` (the export's checkpoint) converted to the engine's precision,
    traced, and checked on ``check_feeds()`` (real text, tokenized as served). Both callables
    run only when a build is needed."""
    engine = spec.engine(variant)
    fingerprint = torchscript_fingerprint(spec, variant, manifest.fingerprint)
    if not force and is_current(path, fingerprint):
        log.info("%s: TorchScript %s is current", spec.name, path)
        return path
    traced, record = make_torchscript(load_model(), spec.task, engine.precision, engine.attention, manifest.inputs,
                                      check_feeds(), gate_for(spec, engine.precision), pad_token_id=manifest.pad_token_id)
    if record.output != manifest.output:
        raise TorchScriptError(f"{spec.name}: traced output {record.output!r}, export declares {manifest.output!r}")
    record.source = manifest.checkpoint
    record.fingerprint = fingerprint
    save(traced, record, path)
    log.info("%s: wrote %s (%s, %s attention, traced on %s)", spec.name, path, engine.precision,
             engine.attention, record.trace_device_type)
    return path


def is_current(path: Path, fingerprint: str) -> bool:
    """The TorchScript file exists and its record names ``fingerprint``."""
    record = record_path(path)
    return path.exists() and record.exists() and TorchScriptRecord.read(record).fingerprint == fingerprint


def random_check_feeds(vocab_size: int, seq: int, seed: int = 0, rows: int = 16) -> dict[str, np.ndarray]:
    """Random token ids with random real lengths, for checking a model with random weights."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1000, vocab_size, (rows, seq))
    mask = np.ones_like(ids)
    for row, length in enumerate(rng.integers(2, seq + 1, rows)):
        mask[row, length:] = 0
    return {contract.INPUT_IDS: ids * mask, contract.ATTENTION_MASK: mask, contract.TOKEN_TYPE_IDS: np.zeros_like(ids)}
