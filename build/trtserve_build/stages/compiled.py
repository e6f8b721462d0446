"""Engine stage of the ``torch`` backend, ``engine_format = "aoti"``: the fused encoder
(models/fused.py) compiled ahead of time by AOTInductor (torch.export with a dynamic batch and
sequence length), as two packages:

``<precision>.pt2``       the masked program: any batch (rows right-padded, additive key bias);
``<precision>-full.pt2``  the same encoder with no mask at all, which the serving engine runs for
                          batches whose rows are all full length (it knows that on the host).

Compiling is Inductor's work at build time (about 45 s per package for MiniLM on a 2-core CPU),
so a serving instance only loads the shared libraries and captures its CUDA graphs. Every build
is checked on real text, as the TorchScript stage checks its trace: the masked package against
the fused module run eagerly (compilation must not change the function) and against the FP32
Hugging Face model (the spec's precision gate), and the full-rows package against the masked one
on every check row cut to its own length.

A package holds kernels for the device it was compiled on: a CUDA package is compiled on a GPU
host (there is no cross-compilation); ``device="cpu"`` makes a CPU package (the tests).
"""
from __future__ import annotations

import copy
import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import trtserve_contract as contract
from trtserve_backend.torch_engine import load_package

from ..core.errors import TorchScriptError
from ..core.files import sha256_file
from ..core.lazy import lazy_import
from ..core.metrics import TRACE_MIN_COSINE, PrecisionGate, check_tolerance, gate_for
from ..core.paths import full_rows_path, record_path
from ..core.records import TorchScriptRecord
from ..core.stamps import digest
from ..models.fused import fused_encoder
from ..models.heads import task_module

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


def _as_numpy(tensor) -> np.ndarray:
    return tensor.detach().float().cpu().numpy()


def _rows(module, feeds: tuple, chunk: int = 16) -> np.ndarray:
    with torch.no_grad():
        return np.concatenate([_as_numpy(module(*(t[i:i + chunk] for t in feeds)))
                               for i in range(0, len(feeds[0]), chunk)])


def _each_row_full(module, feeds: tuple, mask_index: int) -> np.ndarray:
    """``module`` on every row alone, cut to its own length (no padding left)."""
    outs = []
    with torch.no_grad():
        for row in range(len(feeds[0])):
            length = max(2, int(feeds[mask_index][row].sum()))
            outs.append(_as_numpy(module(*(t[row:row + 1, :length] for t in feeds))))
    return np.concatenate(outs)


def make_compiled(hf_model, task: str, precision: str, input_names: Sequence[str],
                  check_feeds: dict[str, np.ndarray], gate: PrecisionGate, path: Path, *, output: str,
                  max_batch: int, max_seq: int, device: str = "cuda") -> TorchScriptRecord:
    """Compile, load back and check both packages (``path`` and its full-rows twin); returns the record
    (``output``: the export's output name, which the engine's output stands for)."""
    started = time.perf_counter()
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise TorchScriptError(
            "engine_format \"aoti\" compiles CUDA kernels on a GPU host (torch.cuda is unavailable here); run "
            "`make engines VARIANT=gpu_torch` there, or set engine_format = \"torchscript\" for this variant")
    input_names = tuple(input_names)
    reference = task_module(copy.deepcopy(hf_model).float(), task, input_names).to(dev)
    feeds = tuple(torch.from_numpy(np.ascontiguousarray(check_feeds[n])).to(dev, torch.int64) for n in input_names)
    masked = fused_encoder(hf_model, task, input_names, precision).to(dev)
    full = fused_encoder(hf_model, task, input_names, precision, full_rows=True).to(dev)
    expected, eager = _rows(reference, feeds), _rows(masked, feeds)

    example = tuple(t[:2] for t in feeds)
    compile_package(masked, example, max_batch, max_seq, Path(path))
    compile_package(full, example, max_batch, max_seq, full_rows_path(path))
    compiled = load_package(path, dev)
    compiled_out = _rows(compiled, feeds)
    what = f"AOTInductor {precision} fused encoder"
    compile_check = check_tolerance(eager, compiled_out, f"{what} vs the same module run eagerly",
                                    min_cosine=TRACE_MIN_COSINE)
    fp32_check = check_tolerance(expected, compiled_out, f"{what} vs FP32", min_cosine=gate.min_cosine,
                                 max_nonfinite_fraction=gate.max_nonfinite_fraction, atol=gate.atol)
    mask_index = input_names.index(contract.ATTENTION_MASK)
    full_check = check_tolerance(_each_row_full(compiled, feeds, mask_index),
                                 _each_row_full(load_package(full_rows_path(path), dev), feeds, mask_index),
                                 f"{what}, full-rows program vs masked program", min_cosine=FULL_ROWS_MIN_COSINE)
    log.info("compiled %s on %s: vs eager cos %.7f, vs fp32 cos %.6f, full rows vs masked cos %.6f", what,
             dev.type, compile_check.min_cosine, fp32_check.min_cosine, full_check.min_cosine)
    return TorchScriptRecord(
        task=task, precision=precision, attention="fused", inputs=input_names, output=output,
        trace_device_type=dev.type, target_device_type=dev.type, retargeted_constants=0,
        torch_version=torch.__version__, transformers_version=transformers.__version__,
        trace_vs_eager=asdict(compile_check), vs_fp32=asdict(fp32_check), gate=asdict(gate),
        checked_rows=len(expected), seconds=round(time.perf_counter() - started, 2),
        engine_format="aoti", full_rows_vs_masked=asdict(full_check))


def save_record(record: TorchScriptRecord, path: Path) -> Path:
    record.sha256 = sha256_file(path)
    record.write(record_path(path))
    return path


# ---- the pipeline stage ---------------------------------------------------------------------

def compiled_fingerprint(spec, variant: str, export_fingerprint: str, max_batch: int, device: str) -> str:
    precision = spec.engine(variant).precision
    return digest({"export": export_fingerprint, "precision": precision, "gate": asdict(gate_for(spec, precision)),
                   "torch": torch.__version__, "format": "aoti-1", "max_batch": max_batch,
                   "max_seq": spec.model.max_sequence_length, "device": device})


def build_compiled(spec, variant: str, manifest, path: Path, *, load_model: Callable[[], object],
                   check_feeds: Callable[[], dict[str, np.ndarray]], max_batch: int, force: bool = False,
                   device: str = "cuda") -> Path:
    """The variant's two AOTInductor packages at ``path`` (and its full-rows twin), unless current ones
    are there; ``load_model()`` and ``check_feeds()`` run only when a build is needed."""
    engine = spec.engine(variant)
    fingerprint = compiled_fingerprint(spec, variant, manifest.fingerprint, max_batch, device)
    record = record_path(path)
    if (not force and path.exists() and full_rows_path(path).exists() and record.exists()
            and TorchScriptRecord.read(record).fingerprint == fingerprint):
        log.info("%s: AOTInductor packages %s are current", spec.name, path)
        return path
    made = make_compiled(load_model(), spec.task, engine.precision, manifest.inputs, check_feeds(),
                         gate_for(spec, engine.precision), Path(path), output=manifest.output, max_batch=max_batch,
                         max_seq=spec.model.max_sequence_length, device=device)
    made.source, made.fingerprint = manifest.checkpoint, fingerprint
    save_record(made, Path(path))
    log.info("%s: wrote %s and %s (%s, fused encoder, compiled on %s)", spec.name, path, full_rows_path(path).name,
             engine.precision, device)
    return Path(path)
