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

    python -m trtserve_build.torchscript --config config.json --task classification \\
        --precision fp16 --out /tmp/model.pt
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import json
import logging
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from trtserve_backend import contract
from trtserve_backend.torch_engine import METADATA_FILE

from .export import record_path
from .spec import TORCH_ATTENTION, TORCH_PRECISIONS

log = logging.getLogger(__name__)

#: One spelling, in the spec: what [engine.<variant>] backend = "torch" accepts.
TORCHSCRIPT_PRECISIONS = TORCH_PRECISIONS
ATTENTION_IMPLEMENTATIONS = TORCH_ATTENTION
#: Attention implementations registered with transformers for ``attention = "eager"``:
#: fp32/fp16, and hybrid (softmax in FP32). Both build their mask with device-side ops only.
EAGER_ATTENTION = "trtserve_eager"
FP32_SOFTMAX_ATTENTION = "trtserve_eager_fp32_softmax"
#: Traced vs eager at the same precision: the same kernels run, so anything below this is a
#: tracing error (e.g. a data-dependent branch frozen with the example inputs).
TRACE_MIN_COSINE = 0.99999
#: fp16/hybrid vs fp32 when the spec gates no cosine for that precision: loose enough for FP16
#: rounding (measured >= 0.9999 on MiniLM), tight enough to catch a broken conversion.
SANITY_MIN_COSINE = 0.999
FORMAT_VERSION = 1


class TorchScriptError(RuntimeError):
    """The TorchScript build failed; the message says why and what to do."""


class TorchScriptToleranceError(TorchScriptError):
    """A traced module disagrees with its reference beyond the allowed tolerance."""


# ---- the module that gets traced ----------------------------------------------------------

def _task_module_class():
    import torch

    class TaskModule(torch.nn.Module):
        """``forward(input_ids, attention_mask[, token_type_ids])`` -> the task output in FP32."""

        def __init__(self, inner, task: str):
            super().__init__()
            if task not in (contract.CLASSIFICATION, contract.EMBEDDING_TASK):
                raise TorchScriptError(f"no TorchScript module for task {task!r}")
            self.inner = inner
            self.task = task

        def forward(self, input_ids, attention_mask, token_type_ids=None):
            out = self.inner(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
            if self.task == contract.CLASSIFICATION:
                return out.logits.float()
            hidden = out.last_hidden_state.float()
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)

    return TaskModule


def task_module(hf_model, task: str):
    """Wrap a Hugging Face model (``...ForSequenceClassification`` or the bare encoder) for ``task``."""
    return _task_module_class()(hf_model, task).eval()


def _fp32_layer_norm_class():
    import torch
    import torch.nn.functional as F

    class Fp32LayerNorm(torch.nn.Module):
        """LayerNorm in FP32 inside an FP16 model: FP32 weights, input cast up, output cast back."""

        def __init__(self, ln: torch.nn.LayerNorm):
            super().__init__()
            self.normalized_shape = tuple(ln.normalized_shape)
            self.eps = float(ln.eps)
            self.weight = torch.nn.Parameter(ln.weight.detach().float().clone(), requires_grad=False) \
                if ln.weight is not None else None
            self.bias = torch.nn.Parameter(ln.bias.detach().float().clone(), requires_grad=False) \
                if ln.bias is not None else None

        def forward(self, x):
            return F.layer_norm(x.float(), self.normalized_shape, self.weight, self.bias, self.eps).to(x.dtype)

    return Fp32LayerNorm


def eager_fp32_softmax_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """transformers' eager attention with scores + mask and the softmax in FP32 (the hybrid policy)."""
    import torch

    if scaling is None:
        scaling = query.size(-1) ** -0.5
    scores = torch.matmul(query, key.transpose(2, 3)).float() * scaling
    if attention_mask is not None:
        scores = scores + attention_mask.float()
    probs = torch.softmax(scores, dim=-1).to(value.dtype)
    output = torch.matmul(probs, value).transpose(1, 2).contiguous()
    return output, probs


def eager_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """transformers' eager attention (softmax in the activations' dtype), for inference."""
    import torch

    if scaling is None:
        scaling = query.size(-1) ** -0.5
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        scores = scores + attention_mask
    probs = torch.softmax(scores, dim=-1)
    output = torch.matmul(probs, value).transpose(1, 2).contiguous()
    return output, probs


def capture_safe_eager_mask(*args, dtype=None, **kwargs):
    """transformers' eager mask (0 = attend, dtype's minimum = masked) built from device-side ops.

    transformers 5.17 builds it with ``torch.where(mask, torch.tensor(0.0, device=...), min)``:
    traced, the scalar is a host constant copied to the GPU on every call, which CUDA graph
    capture refuses (seen on an H200). ``torch.zeros((), device=...)`` is a kernel instead.
    """
    import torch
    from transformers.masking_utils import sdpa_mask

    dtype = dtype or torch.float32
    kwargs.pop("allow_is_causal_skip", None)
    mask = sdpa_mask(*args, allow_is_causal_skip=False, **kwargs)
    if mask is None:
        return None
    return torch.where(mask, torch.zeros((), device=mask.device, dtype=dtype), torch.finfo(dtype).min)


#: Our attention implementations: name -> (attention function, mask function).
_IMPLEMENTATIONS = {
    EAGER_ATTENTION: (eager_attention, capture_safe_eager_mask),
    FP32_SOFTMAX_ATTENTION: (eager_fp32_softmax_attention, capture_safe_eager_mask),
}


def _register(name: str) -> None:
    try:
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface
    except ImportError as e:  # pragma: no cover - depends on the transformers release
        raise TorchScriptError(
            f"this transformers release cannot register a custom attention function ({e}); "
            "use attention = \"sdpa\"") from e
    attention, mask = _IMPLEMENTATIONS[name]
    AttentionInterface.register(name, attention)
    AttentionMaskInterface.register(name, mask)


def attention_implementation(attention: str, precision: str) -> str:
    """The transformers attention implementation name for an (attention, precision) pair."""
    if attention not in ATTENTION_IMPLEMENTATIONS:
        raise TorchScriptError(f"attention {attention!r}; known: {ATTENTION_IMPLEMENTATIONS}")
    if attention == "eager":
        return FP32_SOFTMAX_ATTENTION if precision == "hybrid" else EAGER_ATTENTION
    return attention


def convert(hf_model, precision: str, attention: str):
    """Return a converted deep copy of ``hf_model`` (the original stays FP32 as the reference)."""
    import torch

    if precision not in TORCHSCRIPT_PRECISIONS:
        raise TorchScriptError(f"precision {precision!r} is not available for the torch backend; "
                               f"choose one of {TORCHSCRIPT_PRECISIONS}")
    model = copy.deepcopy(hf_model).eval()
    name = attention_implementation(attention, precision)
    if name in _IMPLEMENTATIONS:
        _register(name)
    model.config._attn_implementation = name
    if precision == "fp32":
        return model.float()
    model.half()
    if precision == "hybrid":
        Fp32LayerNorm = _fp32_layer_norm_class()
        for parent in list(model.modules()):
            for child_name, child in list(parent.named_children()):
                if isinstance(child, torch.nn.LayerNorm):
                    setattr(parent, child_name, Fp32LayerNorm(child))
    return model


# ---- tracing --------------------------------------------------------------------------------

def example_inputs(input_names: Sequence[str], device, vocab_size: int, pad_token_id: int = 0,
                   batch: int = 2, seq: int = 16, seed: int = 0) -> tuple:
    """Random token ids with real padding in the second row, so no mask shortcut is traced."""
    import torch

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(min(1000, vocab_size - 1), vocab_size, (batch, seq), generator=g)
    mask = torch.ones(batch, seq, dtype=torch.int64)
    mask[1:, seq // 2:] = 0
    ids[mask == 0] = pad_token_id
    tensors = {contract.INPUT_IDS: ids, contract.ATTENTION_MASK: mask,
               contract.TOKEN_TYPE_IDS: torch.zeros(batch, seq, dtype=torch.int64)}
    return tuple(tensors[n].to(device) for n in input_names)


def trace(module, example: tuple):
    import torch

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

@dataclass(frozen=True)
class Agreement:
    """How closely ``candidate`` rows follow ``reference`` rows."""

    rows: int
    min_cosine: float
    max_abs_diff: float
    nonfinite_fraction: float

    @classmethod
    def measure(cls, reference: np.ndarray, candidate: np.ndarray) -> "Agreement":
        if reference.shape != candidate.shape:
            raise TorchScriptToleranceError(f"output shape {candidate.shape} != reference {reference.shape}")
        ref = reference.astype(np.float64).reshape(len(reference), -1)
        cand = candidate.astype(np.float64).reshape(len(candidate), -1)
        finite = np.isfinite(cand).all(axis=-1)
        nonfinite = float(1.0 - finite.mean()) if len(cand) else 0.0
        if not finite.any():
            return cls(len(ref), float("nan"), float("inf"), nonfinite)
        r, c = ref[finite], cand[finite]
        cos = (r * c).sum(-1) / (np.linalg.norm(r, axis=-1) * np.linalg.norm(c, axis=-1) + 1e-30)
        return cls(len(ref), float(cos.min()), float(np.abs(r - c).max()), nonfinite)


def check_agreement(agreement: Agreement, what: str, *, min_cosine: float, max_nonfinite_fraction: float = 0.0,
                    atol: float | None = None) -> None:
    """Raise TorchScriptToleranceError with the numbers when ``agreement`` misses a bound."""
    problems = []
    if agreement.nonfinite_fraction > max_nonfinite_fraction:
        problems.append(f"{agreement.nonfinite_fraction:.1%} of outputs contain NaN/Inf "
                        f"(allowed {max_nonfinite_fraction:.1%})")
    if not agreement.min_cosine >= min_cosine:  # also catches NaN
        problems.append(f"min cosine {agreement.min_cosine:.7f} < {min_cosine}")
    if atol is not None and agreement.max_abs_diff > atol:
        problems.append(f"max |diff| {agreement.max_abs_diff:.3g} > {atol:g}")
    if problems:
        raise TorchScriptToleranceError(f"{what}: " + "; ".join(problems) + f" over {agreement.rows} rows")


@dataclass(frozen=True)
class PrecisionGate:
    """Bounds of the converted module against the FP32 reference."""

    min_cosine: float
    max_nonfinite_fraction: float = 0.0
    atol: float | None = None


def gate_for(spec, precision: str) -> PrecisionGate:
    """The spec's gate for ``precision`` (fp32: the export tolerances; others: [precision.gates])."""
    if precision == "fp32":
        return PrecisionGate(min_cosine=spec.export.min_cosine, atol=spec.export.atol)
    gate = spec.precision.gate(precision)
    nonfinite = gate.max_nonfinite_fraction if gate.max_nonfinite_fraction is not None else 0.0
    return PrecisionGate(min_cosine=gate.min_cosine if gate.min_cosine is not None else SANITY_MIN_COSINE,
                         max_nonfinite_fraction=nonfinite)


# ---- one build ------------------------------------------------------------------------------

@dataclass
class TorchScriptRecord:
    """What a TorchScript build made and how it was checked; stored beside and inside the file."""

    task: str
    precision: str
    attention: str
    inputs: tuple[str, ...]
    output: str
    trace_device_type: str
    target_device_type: str
    retargeted_constants: int
    torch_version: str
    transformers_version: str
    trace_vs_eager: dict[str, float]
    vs_fp32: dict[str, float]
    gate: dict[str, Any]
    checked_rows: int
    seconds: float
    source: str = ""
    fingerprint: str = ""
    sha256: str = ""
    format: int = FORMAT_VERSION
    created_utc: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))

    def metadata(self) -> dict:
        """The part stored inside the archive (everything but the file's own hash)."""
        d = asdict(self)
        d.pop("sha256")
        return d

    def write(self, path: Path) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def read(cls, path: Path) -> "TorchScriptRecord":
        data = json.loads(Path(path).read_text())
        data["inputs"] = tuple(data["inputs"])
        return cls(**data)


def _as_numpy(tensor) -> np.ndarray:
    return tensor.detach().float().cpu().numpy()


def _run_rows(module, feeds: tuple, chunk: int = 16) -> np.ndarray:
    """Run ``module`` over the check rows in chunks (keeps CPU FP16 runs small)."""
    import torch

    outs = []
    # optimized_execution(False): the plain interpreter, as the serving engine runs the module
    # (no TorchScript fusion, whose different rounding would blur the trace check).
    with torch.no_grad(), torch.jit.optimized_execution(False):
        for start in range(0, len(feeds[0]), chunk):
            outs.append(_as_numpy(module(*(t[start:start + chunk] for t in feeds))))
    return np.concatenate(outs)


def make_torchscript(hf_model, task: str, precision: str, attention: str, input_names: Sequence[str],
                     check_feeds: dict[str, np.ndarray], gate: PrecisionGate, *, device: str | None = None,
                     target_device_type: str = "cuda", pad_token_id: int = 0):
    """Convert, trace and check one module; returns (ScriptModule, TorchScriptRecord without file fields).

    ``hf_model`` is an FP32 Hugging Face model (left unchanged). ``check_feeds`` are tokenized
    real texts ({input name: [n, seq] int64}), padded as the serving tokenizer pads them.
    """
    import torch
    import transformers

    started = time.perf_counter()
    if device is None:
        device = target_device_type if target_device_type == "cuda" and torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    input_names = tuple(input_names)
    reference = task_module(copy.deepcopy(hf_model).float(), task).to(dev)
    candidate = task_module(convert(hf_model, precision, attention), task).to(dev)
    feeds = tuple(torch.from_numpy(np.ascontiguousarray(check_feeds[n])).to(dev, torch.int64) for n in input_names)

    expected = _run_rows(reference, feeds)
    eager = _run_rows(candidate, feeds)
    example = example_inputs(input_names, dev, int(hf_model.config.vocab_size), pad_token_id)
    traced = trace(candidate, example)
    traced_out = _run_rows(traced, feeds)

    trace_check = Agreement.measure(eager, traced_out)
    check_agreement(trace_check, f"traced {precision} module vs the same module run eagerly",
                    min_cosine=TRACE_MIN_COSINE)
    fp32_check = Agreement.measure(expected, traced_out)
    check_agreement(fp32_check, f"traced {precision} module vs FP32", min_cosine=gate.min_cosine,
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
    import torch

    from .export import sha256_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.jit.save(script_module, str(tmp), _extra_files={METADATA_FILE: json.dumps(record.metadata())})
    tmp.replace(path)
    record.sha256 = sha256_file(path)
    record.write(record_path(path))
    return path


# ---- the pipeline stage ---------------------------------------------------------------------

def torchscript_path(spec, precision: str, attention: str) -> Path:
    from .export import export_dir

    return export_dir(spec) / "torchscript" / f"{precision}-{attention}.pt"


def torchscript_fingerprint(spec, variant: str, export_fingerprint: str) -> str:
    import torch

    engine = spec.engine(variant)
    key = json.dumps({"export": export_fingerprint, "precision": engine.precision, "attention": engine.attention,
                      "gate": asdict(gate_for(spec, engine.precision)), "torch": torch.__version__,
                      "format": FORMAT_VERSION}, sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def tokenize_for_check(tokenizer_file: Path, texts: Sequence[str], max_length: int, buckets: Sequence[int],
                       pad_token_id: int, input_names: Sequence[str]) -> dict[str, np.ndarray]:
    """Texts tokenized exactly as the serving tokenizer does (one request, padded to its bucket)."""
    from trtserve_backend.tokenize import BucketTokenizer

    tok = BucketTokenizer.from_file(str(tokenizer_file), max_length, buckets, pad_token_id, tuple(input_names))
    return tok.encode(list(texts))


def build_torchscript(spec, variant: str, *, force: bool = False) -> Path:
    """The ``torch`` backend's engine: trace the exported checkpoint (cached) and return the file."""
    from .export import TOKENIZER_FILE, ExportManifest, _build_module, export_dir, validation_texts

    engine = spec.engine(variant)
    artifacts = export_dir(spec)
    manifest = ExportManifest.read(artifacts)
    path = torchscript_path(spec, engine.precision, engine.attention)
    fingerprint = torchscript_fingerprint(spec, variant, manifest.fingerprint)
    if not force and path.exists() and record_path(path).exists():
        if TorchScriptRecord.read(record_path(path)).fingerprint == fingerprint:
            log.info("%s: TorchScript %s is current", spec.name, path)
            return path
    module, _ = _build_module(spec, Path(manifest.checkpoint))
    feeds = tokenize_for_check(artifacts / TOKENIZER_FILE, validation_texts(), spec.model.max_sequence_length,
                               spec.model.length_buckets, manifest.pad_token_id, manifest.inputs)
    traced, record = make_torchscript(module.inner, spec.task, engine.precision, engine.attention, manifest.inputs,
                                      feeds, gate_for(spec, engine.precision), pad_token_id=manifest.pad_token_id)
    if record.output != manifest.output:
        raise TorchScriptError(f"{spec.name}: traced output {record.output!r}, export declares {manifest.output!r}")
    record.source = manifest.checkpoint
    record.fingerprint = fingerprint
    save(traced, record, path)
    log.info("%s: wrote %s (%s, %s attention, traced on %s)", spec.name, path, engine.precision,
             engine.attention, record.trace_device_type)
    return path


# ---- random weights (benchmarks: architecture from a config.json) ---------------------------

def random_model(config_path: Path, task: str, seed: int = 0):
    """A Hugging Face BERT-family model of ``config_path``'s architecture with random weights."""
    import torch
    from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification

    config = AutoConfig.from_pretrained(str(config_path))
    torch.manual_seed(seed)
    if task == contract.CLASSIFICATION:
        return AutoModelForSequenceClassification.from_config(config).eval()
    return AutoModel.from_config(config, add_pooling_layer=False).eval()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trtserve_build.torchscript", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="a Hugging Face config.json (weights are random)")
    parser.add_argument("--task", choices=[contract.CLASSIFICATION, contract.EMBEDDING_TASK], default=contract.CLASSIFICATION)
    parser.add_argument("--precision", choices=TORCHSCRIPT_PRECISIONS, default="fp16")
    parser.add_argument("--attention", choices=ATTENTION_IMPLEMENTATIONS, default="sdpa")
    parser.add_argument("--seq", type=int, default=128, help="check rows' sequence length")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    model = random_model(Path(args.config), args.task, args.seed)
    rng = np.random.default_rng(args.seed)
    ids = rng.integers(1000, model.config.vocab_size, (16, args.seq))
    mask = np.ones_like(ids)
    for row, length in enumerate(rng.integers(2, args.seq + 1, 16)):
        mask[row, length:] = 0
    feeds = {contract.INPUT_IDS: ids * mask, contract.ATTENTION_MASK: mask, contract.TOKEN_TYPE_IDS: np.zeros_like(ids)}
    gate = PrecisionGate(min_cosine=SANITY_MIN_COSINE if args.precision != "fp32" else 0.99999)
    traced, record = make_torchscript(model, args.task, args.precision, args.attention, contract.ENCODER_INPUTS,
                                      feeds, gate)
    record.source = f"random weights (seed {args.seed}) for {args.config}"
    save(traced, record, Path(args.out))
    print(json.dumps(record.metadata(), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
