"""`make bench-matrix`: latency, throughput and memory over batch x sequence x precision x executor.

Models
  * ``bert-base``: BERT-base (hidden 768, 12 layers) built from ``BertConfig()`` with seeded
    random weights -- the paper's shapes; right for latency, useless for accuracy.
  * ``minilm``: all-MiniLM-L6-v2 with its real weights (the ``embed`` deployment).
  Both run as the exported encoder computes: BERT + mean pooling over the attention mask.
  * ``roberta-base``, ``deberta-v3-base``: base-sized configs of the architecture registry, random weights.
  * ``gpt2``: GPT-2 124M with seeded random weights, the prompt step (input_ids [batch, seq] ->
    logits and key/values, no past) of issue 11's decoder export (bench/matrix_gpt2.py).

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
so are the larger points of that series; a series that cannot run (its graph cannot be made or
loaded, a run raises) is recorded as ``unavailable``/``error`` rows with the error; ``--budget-min`` stops the whole run (those points are
not recorded, so a rerun resumes there). The CSV is appended to as it goes; points already in it
are not measured again (``--redo`` to re-measure).

    python -m bench.bench_matrix                 # full matrix -> docs/results/bench_matrix.csv + PNGs
    python -m bench.bench_matrix --quick         # CI subset (about a minute)
    python -m bench.bench_matrix --plot-only     # redraw the PNGs from the CSV

The models, graphs and executors: bench/matrix_models.py; timing, memory and the CSV:
bench/matrix_measure.py; plots: bench/matrix_plot.py.
"""
from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

from trtserve_build.core.lazy import import_module

from .matrix_measure import (
    CONTENTION_RETRIES,
    MAX_FOREIGN_CPU,
    CsvSink,
    ForeignCpu,
    PeakMemory,
    drop_contended,
    make_row,
    measure,
    point_key,
    read_rows,
    resident_mib,
    safe_resident,
)
from .matrix_models import MODELS, SEQUENCES, Skip, load_series, make_feeds, onnx_graph, token_stream
from .matrix_plot import device_kind, plot, summary, write_machine

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DIR = REPO_ROOT / "docs" / "results"
QUICK_DIR = REPO_ROOT / "results"

BATCHES = (1, 2, 4, 8, 16, 32)
CPU_SERIES = (("torch-cpu", "fp32"), ("ort-cpu", "fp32"), ("ort-cpu", "fp16"), ("ort-cpu", "hybrid"), ("ort-cpu", "int8"))
GPU_SERIES = (("torch-cuda", "fp32"), ("torch-cuda", "fp16"), ("torch-cuda", "hybrid"), ("tensorrt", "fp32"),
              ("tensorrt", "fp16"), ("tensorrt", "hybrid"), ("tensorrt", "int8"))
QUICK = dict(models=("minilm",), batches=(1, 8), sequences=(32, 128),
             series=(("torch-cpu", "fp32"), ("ort-cpu", "fp32"), ("ort-cpu", "hybrid"), ("ort-cpu", "int8")))
#: The baseline of the speedup heatmaps, per device kind.


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
    retries: int = CONTENTION_RETRIES,
) -> int:
    """Measure every missing point, one fresh process per series (clean memory numbers);
    returns the number of series run."""
    if redo and out_csv.exists():
        kept = [r for r in read_rows(out_csv)
                if not (r["model"] in models and (r["executor"], r["precision"]) in series)]
        out_csv.unlink()
        sink = CsvSink(out_csv)
        for r in kept:
            sink.append(r)
    CsvSink(out_csv)
    deadline = time.time() + budget_s
    existing = {point_key(r) for r in read_rows(out_csv)}
    ran = 0
    for model in models:
        for executor, precision in series:
            if all((model, executor, precision, b, s) in existing for b in batches for s in sequences):
                continue
            if time.time() > deadline:
                print(f"bench-matrix: time budget spent; {model}/{executor}/{precision} and later left for a rerun")
                return ran
            if executor == "ort-cpu":
                try:
                    onnx_graph(model, precision)  # export/transform/calibrate here, not in the timed child
                except Exception as e:  # noqa: BLE001 - the rows say why this series has no numbers
                    why = f"the {precision} graph could not be made: {type(e).__name__}: {e}"
                    print(f"bench-matrix: {model}/{executor}/{precision}: {why}", file=sys.stderr)
                    record_unavailable(out_csv, model, executor, precision, batches, sequences, why[:600])
                    continue
            cmd = [sys.executable, "-m", "bench.bench_matrix", "--_series", f"{model},{executor},{precision}",
                   "--_csv", str(out_csv), "--_deadline", str(deadline),
                   "--batches", ",".join(map(str, batches)), "--sequences", ",".join(map(str, sequences)),
                   "--max-run-s", str(max_run_s), "--target-s", str(target_s), "--contention-retries", str(retries)]
            code = subprocess.call(cmd)
            ran += 1
            if code == BUDGET_EXIT:
                print("bench-matrix: time budget spent; rerun to resume")
                return ran
            if code != 0:
                print(f"bench-matrix: {model}/{executor}/{precision} failed (exit {code})", file=sys.stderr)
    return ran


BUDGET_EXIT = 3


def record_unavailable(out_csv: Path, model: str, executor: str, precision: str, batches: Sequence[int],
                       sequences: Sequence[int], why: str, inputs: str = "") -> None:
    """One ``unavailable`` row with ``why`` for each missing point of the series."""
    existing = {point_key(r) for r in read_rows(out_csv)}
    sink, host = CsvSink(out_csv), socket.gethostname()
    for b in batches:
        for s in sequences:
            if (model, executor, precision, b, s) not in existing:
                sink.append(make_row(model, executor, precision, b, s, "unavailable", why, "", inputs, host))


def run_series(out_csv: Path, model: str, executor: str, precision: str, batches: Sequence[int],
               sequences: Sequence[int], *, max_run_s: float, target_s: float, deadline: float,
               retries: int = CONTENTION_RETRIES) -> int:
    """The points of one series in this (fresh) process; returns 0, or BUDGET_EXIT."""
    existing = {point_key(r) for r in read_rows(out_csv)}
    points = sorted(((b, s) for b in batches for s in sequences), key=lambda p: (p[0] * p[1], p[1]))
    todo = [p for p in points if (model, executor, precision, *p) not in existing]
    if not todo:
        return 0
    sink = CsvSink(out_csv)
    stream, inputs = token_stream(max(batches) * max(sequences) + 1024, model)
    host = socket.gethostname()
    kind = device_kind(executor)
    _import_runtime(executor)
    before = safe_resident(kind)
    try:
        loaded = load_series(model, executor, precision)
    except Skip as why:
        print(f"bench-matrix: {model}/{executor}/{precision}: skipped ({why})")
        record_unavailable(out_csv, model, executor, precision, batches, sequences, str(why)[:600], inputs)
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
            sink.append(make_row(model, executor, precision, b, s, "skipped", note, loaded.device_name, inputs, host))
            continue
        feeds = make_feeds(stream, b, s, model)
        for attempt in range(retries + 1):
            try:
                with PeakMemory(loaded.device, base) as mem, ForeignCpu() as foreign:
                    result = measure(loaded.run, feeds, max_run_s=max_run_s, target_s=target_s)
            except Exception as e:  # noqa: BLE001 - the runtime cannot run this point: the row says so
                result = {"status": "error", "note": f"{type(e).__name__}: {e}"[:600]}
                break
            if foreign.share <= MAX_FOREIGN_CPU or attempt == retries:
                break
            print(f"bench-matrix: other processes used {foreign.share:.0%} of the CPU during "
                  f"b={b} s={s}; measuring again", flush=True)
            time.sleep(10)
        if result["status"] == "error":
            print(f"bench-matrix: {model}/{executor}/{precision} b={b} s={s}: {result['note']}", file=sys.stderr)
            sink.append(make_row(model, executor, precision, b, s, "error", result["note"], loaded.device_name, inputs, host))
            continue
        largest = (tokens, result["first_s"] if result["status"] != "ok" else result["median_ms"] / 1000)
        if result["status"] != "ok":
            blocked = result["note"]
            sink.append(make_row(model, executor, precision, b, s, "skipped", blocked, loaded.device_name, inputs, host))
            continue
        note = f"{loaded.note}; other processes {foreign.share:.0%} CPU"
        row = make_row(model, executor, precision, b, s, "ok", note, loaded.device_name, inputs, host)
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
        for name in (("onnxruntime",) if executor == "ort-cpu" else ("torch", "transformers")):
            import_module(name)
    except ImportError:
        pass



# ---------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------
def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.bench_matrix", description=__doc__.split("\n")[0])
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
    ap.add_argument("--contention-retries", type=int, default=CONTENTION_RETRIES,
                    help="measure a point again (after 10 s) up to this many times while other processes load the CPU")
    ap.add_argument("--redo-contended", action="store_true",
                    help=f"re-measure points recorded while other processes used > {MAX_FOREIGN_CPU * 100:.0f}%% of the CPU")
    ap.add_argument("--plot-only", action="store_true")
    ap.add_argument("--_series", help=argparse.SUPPRESS)  # internal: one series in a fresh process
    ap.add_argument("--_csv", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--_deadline", type=float, help=argparse.SUPPRESS)
    ap.add_argument("--no-plots", action="store_true")
    args = ap.parse_args(argv)

    if args._series:
        model, executor, precision = args._series.split(",")
        return run_series(args._csv, model, executor, precision, args.batches, args.sequences,
                          max_run_s=args.max_run_s, target_s=args.target_s, deadline=args._deadline,
                          retries=args.contention_retries)
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
                       retries=args.contention_retries,
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
        return import_module("torch").cuda.is_available()
    except ImportError:
        return False


if __name__ == "__main__":
    sys.exit(main())
