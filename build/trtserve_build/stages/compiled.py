"""Engine stage of the ``torch`` backend for the fused BERT-family encoder (models/fused.py), as
two programs of the same function:

``<precision>.<ext>``       the masked program: any batch (rows right-padded, additive key bias);
``<precision>-full.<ext>``  no mask at all, which the serving engine runs for batches whose rows are
                            all full length (it knows that on the host, before the copy).

``engine_format = "fused"``: both traced to TorchScript (``.pt``; no device constants, so a trace
made on a CPU build host runs on the GPU); residual add + LayerNorm is the engine's own operator
(``trtserve::add_layer_norm``, a Triton kernel on CUDA), each in-layer residual added by the GEMM
before it (``norm="epilogue"``). ``"aoti"``: both compiled ahead of time
by AOTInductor (torch.export with a dynamic batch and length; ``.pt2``), which makes Inductor's own
fusions (add + LayerNorm among them) but is compiled for the device it is built on; on torch
2.11+cu130 (the GPU image) loading a CUDA package crashes (bench/gpu/NOTES.md, session 7), CPU
packages work.

Every build is checked on real text: the masked program against the fused module run eagerly
(tracing/compiling must not change the function), against the FP32 Hugging Face model (the spec's
precision gate), and the full-rows program against the masked one on every check row cut to its
own length.
"""
from __future__ import annotations

import copy
import json
import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import trtserve_contract as contract
from trtserve_backend.programs import METADATA_FILE, load_program

from ..core.errors import TorchScriptError
from ..core.files import sha256_file
from ..core.lazy import lazy_import
from ..core.metrics import TRACE_MIN_COSINE, PrecisionGate, check_tolerance, gate_for
from ..core.paths import full_rows_path, record_path
from ..core.records import TorchScriptRecord
from ..core.stamps import digest
from ..models.fused import fused_encoder
from ..models.heads import run_rows, task_module

torch = lazy_import("torch")
transformers = lazy_import("transformers")

log = logging.getLogger(__name__)

#: full-rows program vs masked program on the same rows: different attention kernels (no mask:
#: cuDNN/flash; mask: memory-efficient), so FP16 rounding differs a little more than a retrace.
FULL_ROWS_MIN_COSINE = 0.9999


def compile_package(module, example: tuple, max_batch: int, max_seq: int, path: Path) -> Path:
    """torch.export ``module`` with dynamic batch (1..max_batch) and length (2..max_seq), then AOTInductor."""
    batch = torch.export.Dim("batch", min=1, max=max_batch)
    seq = torch.export.Dim("seq", min=2, max=max_seq)
    with torch.no_grad():
        exported = torch.export.export(module, example, dynamic_shapes={"inputs": tuple({0: batch, 1: seq}
                                                                                        for _ in example)})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.pt2")  # the packager insists on the suffix
    torch._inductor.aoti_compile_and_package(exported, package_path=str(tmp))
    tmp.replace(path)
    return path


def trace_program(module, example: tuple, path: Path, metadata: dict) -> Path:
    """TorchScript of ``module`` traced on ``example``, with ``metadata`` inside (trtserve.json)."""
    with torch.no_grad():
        traced = torch.jit.trace(module, example, check_trace=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.jit.save(traced, str(tmp), _extra_files={METADATA_FILE: json.dumps(metadata)})
    tmp.replace(path)
    return path


def _each_row_full(module, feeds: tuple, lengths) -> np.ndarray:
    """``module`` on every row alone, cut to its own length (no padding left)."""
    return np.concatenate([run_rows(module, tuple(t[row:row + 1, :max(2, int(lengths[row]))] for t in feeds))
                           for row in range(len(feeds[0]))])


def make_compiled(hf_model, task: str, precision: str, input_names: Sequence[str],
                  check_feeds: dict[str, np.ndarray], gate: PrecisionGate, path: Path, *, output: str,
                  max_batch: int, max_seq: int, device: str = "cuda", engine_format: str = "aoti",
                  norm: str | None = None) -> TorchScriptRecord:
    """Make, load back and check both programs (``path`` and its full-rows twin); returns the record
    (``output``: the export's output name, which the engine's output stands for). ``norm``
    (models/fused.NORM_MODES): by default, for a trace, the residual added in the GEMM's epilogue
    and the engine's bias + LayerNorm operator after it (H200, 256x128: 0.17 ms less GPU time per
    forward than the operator adding the residual, bench/gpu/gemm_levers.py); plain ops for
    AOTInductor (which fuses them itself and cannot call a Python-defined operator)."""
    norm = norm or ("ops" if engine_format == "aoti" else "epilogue")
    started = time.perf_counter()
    dev = torch.device(device)
    if engine_format == "aoti" and dev.type == "cuda" and not torch.cuda.is_available():
        raise TorchScriptError(
            "engine_format \"aoti\" compiles CUDA kernels on a GPU host (torch.cuda is unavailable here); run "
            "`make engines VARIANT=gpu_torch` there, or set engine_format = \"torchscript\" for this variant")
    input_names = tuple(input_names)
    reference = task_module(copy.deepcopy(hf_model).float(), task, input_names).to(dev)
    feeds = tuple(torch.from_numpy(np.ascontiguousarray(check_feeds[n])).to(dev, torch.int64) for n in input_names)
    masked = fused_encoder(hf_model, task, input_names, precision, norm=norm).to(dev)
    full = fused_encoder(hf_model, task, input_names, precision, full_rows=True, norm=norm).to(dev)
    expected, eager = run_rows(reference, feeds), run_rows(masked, feeds)

    lengths = feeds[input_names.index(contract.ATTENTION_MASK)].sum(1)
    rows = [int(lengths.argmax()), int(lengths.argmin())]  # a trace example with real padding
    example = tuple(t[rows] for t in feeds)
    if engine_format == "aoti":
        compile_package(masked, example, max_batch, max_seq, Path(path))
        compile_package(full, example, max_batch, max_seq, full_rows_path(path))
    else:
        meta = {"inputs": list(input_names), "precision": precision, "engine_format": engine_format, "norm": norm}
        trace_program(masked, example, Path(path), meta)
        trace_program(full, example, full_rows_path(path), {**meta, "full_rows": True})
    compiled = load_program(path, dev)
    compiled_out = run_rows(compiled, feeds)
    what = f"{'AOTInductor' if engine_format == 'aoti' else 'traced'} {precision} fused encoder (norm: {norm})"
    compile_check = check_tolerance(eager, compiled_out, f"{what} vs the same module run eagerly",
                                    min_cosine=TRACE_MIN_COSINE)
    fp32_check = check_tolerance(expected, compiled_out, f"{what} vs FP32", min_cosine=gate.min_cosine,
                                 max_nonfinite_fraction=gate.max_nonfinite_fraction, atol=gate.atol)
    full_check = check_tolerance(_each_row_full(compiled, feeds, lengths),
                                 _each_row_full(load_program(full_rows_path(path), dev), feeds, lengths),
                                 f"{what}, full-rows program vs masked program", min_cosine=FULL_ROWS_MIN_COSINE)
    log.info("compiled %s on %s: vs eager cos %.7f, vs fp32 cos %.6f, full rows vs masked cos %.6f", what,
             dev.type, compile_check.min_cosine, fp32_check.min_cosine, full_check.min_cosine)
    return TorchScriptRecord(
        task=task, precision=precision, attention="fused", inputs=input_names, output=output,
        # a fused trace has no device constants: it runs on any device
        trace_device_type=dev.type, target_device_type=dev.type if engine_format == "aoti" else "",
        retargeted_constants=0,
        torch_version=torch.__version__, transformers_version=transformers.__version__,
        trace_vs_eager=asdict(compile_check), vs_fp32=asdict(fp32_check), gate=asdict(gate),
        checked_rows=len(expected), seconds=round(time.perf_counter() - started, 2),
        engine_format=engine_format, full_rows_vs_masked=asdict(full_check))


def save_record(record: TorchScriptRecord, path: Path) -> Path:
    record.sha256 = sha256_file(path)
    record.write(record_path(path))
    return path


# ---- the pipeline stage ---------------------------------------------------------------------

def compiled_fingerprint(spec, variant: str, export_fingerprint: str, max_batch: int, device: str) -> str:
    precision = spec.engine(variant).precision
    return digest({"export": export_fingerprint, "precision": precision, "gate": asdict(gate_for(spec, precision)),
                   "torch": torch.__version__, "format": f"{spec.engine(variant).engine_format}-3",
                   "max_batch": max_batch, "max_seq": spec.model.max_sequence_length, "device": device})


def build_compiled(spec, variant: str, manifest, path: Path, *, load_model: Callable[[], object],
                   check_feeds: Callable[[], dict[str, np.ndarray]], max_batch: int, force: bool = False,
                   device: str | None = None) -> Path:
    """The variant's two fused-encoder programs at ``path`` (and its full-rows twin), unless current
    ones are there; ``load_model()`` and ``check_feeds()`` run only when a build is needed.
    ``device`` (default): "fused" traces on the GPU if there is one, else on the CPU (the trace runs
    anywhere); "aoti" compiles for the GPU."""
    engine = spec.engine(variant)
    if device is None:
        device = "cuda" if engine.engine_format == "aoti" or torch.cuda.is_available() else "cpu"
    fingerprint = compiled_fingerprint(spec, variant, manifest.fingerprint, max_batch, device)
    record = record_path(path)
    if (not force and path.exists() and full_rows_path(path).exists() and record.exists()
            and TorchScriptRecord.read(record).fingerprint == fingerprint):
        log.info("%s: fused-encoder programs %s are current", spec.name, path)
        return path
    made = make_compiled(load_model(), spec.task, engine.precision, manifest.inputs, check_feeds(),
                         gate_for(spec, engine.precision), Path(path), output=manifest.output, max_batch=max_batch,
                         max_seq=spec.model.max_sequence_length, device=device, engine_format=engine.engine_format)
    made.source, made.fingerprint = manifest.checkpoint, fingerprint
    save_record(made, Path(path))
    log.info("%s: wrote %s and %s (%s, fused encoder, %s, made on %s)", spec.name, path, full_rows_path(path).name,
             engine.precision, engine.engine_format, device)
    return Path(path)
