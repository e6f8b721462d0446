"""Issue 13's last engine target, BERT-base fp16 >= 22k seq/s at sequence 128: candidate engines
side by side with the served best (``torch.compile`` + Inductor freezing + our CUDA graph), in one run.

Each candidate is a :class:`levers_models.Lever` (what it changes is in that module). Per
(lever, batch): build from the same seeded FP32 BERT-base (bert-base-uncased config, 2-way head),
compile for the fixed shape, check against FP32 of the same weights, capture in a CUDA graph,
time (timing.time_gpu). The check: min cosine and max |diff| of the logits on padded rows (full
rows for levers without a mask) at the timed shape, and of the mean-pooled 768-d output of the
same lever run eagerly at 32 rows; both must reach the build's fp16 gate
(``trtserve_build.stages.torchscript.SANITY_MIN_COSINE``). Every step has its own time cap
(SIGALRM), a failure is a result, and the JSON is rewritten after each step.

Order (the run must fit one device call): microbenchmarks (attention backends and mask forms,
the FFN GEMM with GELU after it or in the cuBLASLt epilogue, FP8 GEMMs: a GEMM-only bound); which
attention ops torch.compile ends up with for the HF model without a mask and the lean encoder
tracing SDPA itself (levers_micro.sdpa_trace); every lever at 256x128, the most promising first;
512x128 for the baseline and the best passing levers; 1x128 for the baseline and the best; then,
in the time left, the late levers and 1024x128 for the best; the baseline re-timed at the end (the
spread between two timings of one engine).

GPU: ``python3 bench/gpu/engine_levers.py --out $OUT/engine_levers.json`` (bench/gpu/run_engine_levers.sh).
CPU rehearsal (tiny BERT, eager, no graphs): ``python bench/gpu/engine_levers.py --dry-run --out x.json``.
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import sys
import time
from pathlib import Path

_T0 = time.perf_counter()  # the budget counts from here (torch and transformers imports included)

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), *(str(HERE.parents[1] / d) for d in ("build", "serve", "contract"))]

import torch  # noqa: E402

import levers_models as lm  # noqa: E402
from levers_util import (TARGET_1X128_MS, TARGET_SEQ_PER_S, StepTimeout, agreement, cuda_usable,  # noqa: E402,F401
                         graphed, make_feeds, table, time_cap, time_cpu)
from timing import exit_on_sigterm, gpu_info, time_gpu, write_json  # noqa: E402
from trtserve_build.stages.torchscript import SANITY_MIN_COSINE  # noqa: E402

#: Levers run when --levers is not given (the rest: name them, or --levers all).
#: Session 6: the lean encoder (levers_lean.py) beside the baseline and session 5's best (lt_gelu).
DEFAULT_LEVERS = ("baseline", "lean_nomask_lt", "lt_gelu", "lean_kpad_lt", "lean_nomask_fp8ffn", "lean_mask_lt",
                  "lean_nomask_erf", "eager_lean_nomask_lt", "lean_nomask_lt_sdpa", "lean_nomask_fp8")
LATE_LEVERS = ("nomask_lt_gelu",)  # only with the time left at the end
#: Models whose compiled attention ops sdpa_trace reports (the session-5 no-mask slowdown, and the lean
#: encoder letting Inductor trace SDPA).
TRACED = ("nomask", "lean_nomask_lt_sdpa")
#: Rough cost of one (lever, shape) step, to skip what cannot finish inside the budget.
STEP_ESTIMATE_S = {None: 6.0, "default": 18.0, "max-autotune-no-cudagraphs": 150.0, "aoti": 45.0}
DEFERRED = "deferred"
RESTART_EXIT = 75  # the exit status of a run that lost its CUDA context (the shell script resumes it)


def log(msg: str) -> None:
    print(f"[engine_levers {time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Run:
    """One benchmark run: the FP32 model, the levers, the result JSON (rewritten after each step)."""

    def __init__(self, args):
        import transformers
        from transformers import BertConfig, BertForSequenceClassification

        self.args = args
        self.started = _T0
        self.cuda = args.device == "cuda"
        self.device = torch.device(args.device)
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        torch.manual_seed(0)
        config = (BertConfig(num_labels=2) if not args.tiny else
                  BertConfig(vocab_size=1000, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                             intermediate_size=128, num_labels=2))
        self.config = config
        self.fp32 = BertForSequenceClassification(config).eval().to(self.device)
        self.fp32.config._attn_implementation = "sdpa"
        self.reference = lm.LeverModule(self.fp32, mask=True)
        self.reference_pooled = lm.LeverModule(self.fp32, mask=True, pooled=True)
        calib = make_feeds(16, args.seq, config.vocab_size, self.device, seed=3, padded=True)
        self.amax = lm.calibrate(self.fp32, dict(zip(("input_ids", "attention_mask", "token_type_ids"), calib)))
        self.result = {
            "machine": gpu_info(), "torch": torch.__version__, "transformers": transformers.__version__,
            "seq": args.seq, "dry_run": args.dry_run,
            "model": ("BERT-base (bert-base-uncased config), random seeded weights, 2-way classification head"
                      if not args.tiny else "tiny BERT (CPU rehearsal)"),
            "inputs": "timed: random token ids, every row full length; checked: padded rows (levers with a "
                      "mask) or full rows, against FP32 of the same weights (TF32 off)",
            "gate_min_cosine": SANITY_MIN_COSINE, "targets": {"seq_per_s": TARGET_SEQ_PER_S, "ms_1x128": TARGET_1X128_MS},
            "levers": {}, "rows": [], "errors": {}, "micro": {}, "finished": False}
        self.replays: dict = {}
        log(f"torch {torch.__version__}, transformers {transformers.__version__}, "
            f"{self.result['machine'].get('gpu', args.device)}; FP32 model and calibration ready")

    # -- bookkeeping ---------------------------------------------------------------------------
    def left(self) -> float:
        return self.args.budget_s - (time.perf_counter() - self.started)

    def save(self) -> None:
        write_json(self.args.out, self.result)

    def row(self, name: str, batch: int):
        return next((r for r in self.result["rows"] if r["lever"] == name and r["batch"] == batch), None)

    def timer(self, fn, rows: int) -> dict:
        return time_gpu(fn, rows) if self.cuda else time_cpu(fn, rows)

    def micro_timer(self, fn, rows: int) -> dict:
        return time_gpu(fn, rows, budget_s=0.1) if self.cuda else time_cpu(fn, rows, iters=1)

    # -- one lever's eager fidelity on a 768-d output --------------------------------------------
    def pooled_check(self, lever: lm.Lever) -> dict:
        feeds = make_feeds(32, self.args.seq, self.config.vocab_size, self.device, seed=5, padded=lever.mask)
        module = lm.build(self.fp32, lever, self.amax, pooled=True).to(self.device)
        with torch.no_grad(), lm.attention_backend(lever), lm.sdpa_masks_seen() as masks:
            out = module(*feeds)
        with torch.no_grad():
            ref = self.reference_pooled(*feeds)
        del module
        return {**agreement(ref, out), "sdpa_masks": sorted(set(masks))}

    # -- one (lever, batch) step -----------------------------------------------------------------
    def step(self, lever: lm.Lever, batch: int, keep: bool = False, reserve: float = 0.0):
        """Measure one (lever, batch); DEFERRED when it would eat into ``reserve`` seconds."""
        key = f"{lever.name} {batch}x{self.args.seq}"
        if self.row(lever.name, batch) or key in self.result["errors"]:
            return self.row(lever.name, batch)
        estimate = STEP_ESTIMATE_S[lever.compile if not self.args.dry_run else None]
        if reserve and self.left() - reserve < estimate:
            return DEFERRED
        why = self.not_worth(lever)
        if why:
            self.result["errors"][key] = f"skipped: {why}"
            log(f"{key} skipped: {why}")
            return None
        if self.left() < estimate:
            self.result["errors"][key] = f"skipped: {self.left():.0f}s left of the budget, step needs ~{estimate:.0f}s"
            log(self.result["errors"][key] + f" ({key})")
            self.save()
            return None
        self.result["levers"].setdefault(lever.name, {
            "what": lever.what, "encoder": lever.encoder, "dtype": lever.dtype, "mask": lever.mask,
            "mask_form": lever.mask_form if lever.mask else None, "gelu": lever.gelu, "gemm": lever.gemm,
            "attention": lever.attention, "attention_op": lever.attention_op if lever.encoder == "lean" else None,
            "compile": lever.compile, "inductor": lever.inductor, "note": lever.precision_note})
        self.result["running"] = key
        self.save()
        started = time.perf_counter()
        try:
            cap = self.args.cap_s or lever.cap_s
            with time_cap(min(cap, max(self.left(), 1.0))), lm.attention_backend(lever):
                row = self._measure(lever, batch, keep)
        except Exception as e:  # noqa: BLE001 - one lever failing is a result, not the end of the run
            self.result["errors"][key] = f"{type(e).__name__}: {str(e)[:500]}"
            log(f"{key} failed after {time.perf_counter() - started:.0f}s: {self.result['errors'][key]}")
            row = None
            if self.cuda and not cuda_usable():  # a kernel fault: every later step would fail in this process
                self.result["errors"][key] += " (CUDA context lost: the process ends, run_engine_levers.sh resumes)"
                self.result.pop("running", None)
                self.save()
                log("CUDA context lost; exiting for a resumed run")
                os._exit(RESTART_EXIT)
        finally:
            self.result.pop("running", None)
            if self.cuda:
                torch._dynamo.reset()
                gc.collect()
                torch.cuda.empty_cache()
            self.save()
        return row

    def _measure(self, lever: lm.Lever, batch: int, keep: bool) -> dict:
        seq, vocab = self.args.seq, self.config.vocab_size
        t0 = time.perf_counter()
        info = self.result["levers"][lever.name]
        if "pooled_vs_fp32" not in info:
            info["pooled_vs_fp32"] = self.pooled_check(lever)
        module = lm.build(self.fp32, lever, self.amax).to(self.device)
        check = make_feeds(batch, seq, vocab, self.device, seed=11, padded=lever.mask)
        timed = make_feeds(batch, seq, vocab, self.device, seed=batch, padded=False)
        compiled = lever.compile is not None and (not self.args.dry_run or self.args.cpu_compile)
        settings = lm.inductor_settings(lever) if compiled else contextlib.nullcontext()
        with torch.no_grad(), settings:
            torch._dynamo.reset()
            load_s = None
            if compiled and lever.compile == "aoti":
                fn, load_s = self.aoti(module, check, lever, batch)
            elif compiled:
                fn = torch.compile(module, dynamic=False, mode=None if lever.compile == "default" else lever.compile)
            else:
                fn = module
            out = fn(*check)  # compiles here (the timed feeds have the same shape: no recompile)
            if self.cuda:
                torch.cuda.synchronize()
            compile_s = time.perf_counter() - t0
            fidelity = agreement(self.reference(*check), out)
            replay = graphed(fn, timed) if self.cuda else (lambda: fn(*timed))
            direct = fn(*timed).clone()
            replayed = agreement(direct, replay())  # the graph computes what the call does
            breakdown = None
            if self.cuda and batch == self.args.batch and self.left() > 15:
                import levers_micro

                try:  # the same kernels as the replay, without the graph (profiled per kernel)
                    breakdown = levers_micro.kernel_breakdown(lambda: fn(*timed))
                except Exception as e:  # noqa: BLE001 - a diagnostic, not the measurement
                    breakdown = {"error": f"{type(e).__name__}: {str(e)[:200]}"}
        with torch.no_grad():
            r = self.timer(replay, batch)
        if keep:
            self.replays[(lever.name, batch)] = replay
        pooled = info["pooled_vs_fp32"]
        passed = (fidelity["nonfinite_fraction"] == 0 and fidelity["min_cosine"] >= SANITY_MIN_COSINE
                  and pooled["nonfinite_fraction"] == 0 and pooled["min_cosine"] >= SANITY_MIN_COSINE)
        row = {"lever": lever.name, "batch": batch, "seq": seq, **r, "setup_s": round(compile_s, 1),
               "step_s": round(time.perf_counter() - t0, 1), "logits_vs_fp32": fidelity, "within_tolerance": passed,
               "replay_vs_call": replayed}
        if load_s is not None:
            row["package_load_s"] = round(load_s, 2)
        if breakdown is not None:
            row["kernels"] = breakdown
            log(f"{lever.name} kernels at {batch}x{seq}: {breakdown.get('ms', breakdown)}")
        self.result["rows"].append(row)
        log(f"{lever.name:26s} {batch:4d}x{seq}: p50 {r['p50_ms']:.3f} ms, {r['throughput_per_s']:8.0f} seq/s, "
            f"set up in {compile_s:.1f}s, logits cos {fidelity['min_cosine']:.6f} |diff| {fidelity['max_abs_diff']:.2e}, "
            f"pooled cos {pooled['min_cosine']:.6f}{'' if passed else '  OUT OF TOLERANCE'}")
        return row

    def aoti(self, module, example, lever: lm.Lever, batch: int):
        """torch.export + AOTInductor package for this shape, loaded back: (callable, load seconds)."""
        import tempfile

        exported = torch.export.export(module, tuple(example))
        path = Path(tempfile.mkdtemp(prefix="levers_aoti_")) / f"{lever.name}_{batch}.pt2"
        torch._inductor.aoti_compile_and_package(exported, package_path=str(path),
                                                 inductor_configs={"freezing": True, **lever.inductor})
        started = time.perf_counter()
        # single-threaded runner: no locking of its own, which CUDA graph capture does not mix with
        runner = torch._inductor.aoti_load_package(str(path), run_single_threaded=self.cuda)
        return (lambda *args: runner(*args)), time.perf_counter() - started

    def not_worth(self, lever: lm.Lever) -> str | None:
        """A lever pinning an SDPA backend that the microbenchmark found no faster than the default."""
        att = self.result["micro"].get("attention", {})
        kind = "padded mask" if lever.mask else "no mask"
        mine, default = att.get(f"sdpa {lever.attention}, {kind}", {}), att.get(f"sdpa default, {kind}", {})
        if lever.attention and "back_to_back_ms" in default:
            if "back_to_back_ms" not in mine:
                return f"the {lever.attention} backend failed its microbenchmark ({mine.get('error', 'not run')[:120]})"
            if mine["back_to_back_ms"] >= 0.95 * default["back_to_back_ms"]:
                return (f"microbenchmark: {lever.attention} {mine['back_to_back_ms']:.3f} ms vs default "
                        f"{default['back_to_back_ms']:.3f} ms ({kind})")
        return None

    def trace_attention(self) -> None:
        """levers_micro.sdpa_trace for the TRACED levers (no timing; a failure is recorded)."""
        import levers_micro

        store = self.result["micro"].setdefault("sdpa_trace", {})
        feeds = make_feeds(2, self.args.seq, self.config.vocab_size, self.device, seed=1, padded=False)
        for name in TRACED:
            lever = lm.LEVERS_BY_NAME[name]
            store[name] = {"error": "did not finish (the process died in it)"}  # what a resumed run finds
            self.save()
            try:
                with time_cap(min(self.args.micro_cap_s, max(self.left() - 60, 1.0))), lm.attention_backend(lever):
                    store[name] = levers_micro.sdpa_trace(lm.build(self.fp32, lever, self.amax).to(self.device), feeds)
            except Exception as e:  # noqa: BLE001 - a diagnostic, not the measurement
                store[name] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
            log(f"sdpa_trace {name}: {store[name]}")
            self.save()

    # -- phases ----------------------------------------------------------------------------------
    def best(self, batch: int, count: int, fp8: bool = False) -> list[str]:
        """The fastest levers within tolerance at ``batch`` (fp16/bf16 GEMMs, or any fp8), baseline aside."""
        rows = [r for r in self.result["rows"] if r["batch"] == batch and r["within_tolerance"]
                and r["lever"] != lm.BASELINE and lm.LEVERS_BY_NAME[r["lever"]].fp8 == fp8]
        rows.sort(key=lambda r: -r["throughput_per_s"])
        return [r["lever"] for r in rows[:count]]

    def run(self, levers: list[lm.Lever], late: list[lm.Lever]) -> None:
        a = self.args
        if not a.skip_micro and "done" not in self.result["micro"]:
            import levers_micro

            with contextlib.suppress(StepTimeout), time_cap(a.micro_cap_s):
                levers_micro.run_all(self.result["micro"], batch=a.batch, seq=a.seq, config=self.config,
                                     device=self.device, timer=self.micro_timer, log=log, save=self.save)
            self.result["micro"]["done"] = True
            self.save()
        if not a.skip_micro and "sdpa_trace" not in self.result["micro"]:
            self.trace_attention()
        deferred = [lv for lv in levers
                    if self.step(lv, a.batch, keep=lv.name == lm.BASELINE, reserve=a.reserve_s) is DEFERRED]
        by_name = {lv.name: lv for lv in levers + late}
        for name in [lm.BASELINE, *self.best(a.batch, a.top), *self.best(a.batch, 1, fp8=True)]:
            if name in by_name:
                for batch in a.more_batches:
                    self.step(by_name[name], batch)
        best = self.best(a.batch, 1)
        for name in [lm.BASELINE, *best]:
            if name in by_name:
                self.step(by_name[name], 1)
        for lever in deferred + late:
            self.step(lever, a.batch)
        if best and a.big_batch:
            self.step(by_name[best[0]], a.big_batch)
        replay = self.replays.get((lm.BASELINE, a.batch))
        if replay is not None:
            with torch.no_grad():
                r = self.timer(replay, a.batch)
            self.result["baseline_retimed"] = r
            log(f"baseline re-timed at the end: {r['throughput_per_s']:.0f} seq/s (spread of one engine)")
        self.result["finished"] = True
        self.save()


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="JSON results (a .md table is written beside it)")
    p.add_argument("--levers", default=",".join(DEFAULT_LEVERS), help="comma list, or 'all'")
    p.add_argument("--late-levers", default=",".join(LATE_LEVERS), help="run only in the time left at the end")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--more-batches", default="512")
    p.add_argument("--big-batch", type=int, default=1024, help="for the best lever, in the time left (0: none)")
    p.add_argument("--top", type=int, default=1,
                   help="fp16/bf16 levers that get --more-batches (beside the baseline and the best fp8 one)")
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--budget-s", type=float, default=None, help="from the start of this process (default 255; "
                   "dry run: no limit)")
    p.add_argument("--reserve-s", type=float, default=75.0,
                   help="seconds kept for the larger/1-row batches while the levers run at --batch")
    p.add_argument("--cap-s", type=float, default=None, help="every lever's per-step cap (default: the lever's)")
    p.add_argument("--micro-cap-s", type=float, default=25.0)
    p.add_argument("--skip-micro", action="store_true")
    p.add_argument("--resume", action="store_true", help="continue a JSON a crashed run left (its step is skipped)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--dry-run", action="store_true", help="CPU rehearsal: tiny BERT, eager, no graphs, small batches")
    p.add_argument("--tiny", action="store_true", help="tiny BERT config (implied by --dry-run)")
    p.add_argument("--cpu-compile", action="store_true", help="dry run: torch.compile the levers anyway "
                   "(Inductor's CPU backend: slow, checks that each lever compiles and keeps its fidelity)")
    args = p.parse_args(argv)
    if args.dry_run:
        args.device, args.tiny = "cpu", True
        args.batch, args.seq = min(args.batch, 4), min(args.seq, 16)
        args.big_batch = min(args.big_batch, 8)
        args.more_batches = "8"
    if args.budget_s is None:
        args.budget_s = 1e9 if args.dry_run else 255.0
    args.more_batches = [int(b) for b in args.more_batches.split(",") if b]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    exit_on_sigterm()
    names = list(lm.LEVERS_BY_NAME) if args.levers == "all" else [n for n in args.levers.split(",") if n]
    late = [n for n in args.late_levers.split(",") if n and n not in names]
    unknown = [n for n in names + late if n not in lm.LEVERS_BY_NAME]
    if unknown:
        raise SystemExit(f"unknown levers {unknown}; known: {list(lm.LEVERS_BY_NAME)}")
    run = Run(args)
    if args.resume and Path(args.out).exists():
        previous = json.loads(Path(args.out).read_text())
        if previous.get("running"):
            previous["errors"][previous.pop("running")] = "crashed the process (resumed after it)"
        previous["resumed"] = previous.get("resumed", 0) + 1
        run.result.update({k: v for k, v in previous.items() if k not in ("machine", "finished")})
    try:
        run.run([lm.LEVERS_BY_NAME[n] for n in names], [lm.LEVERS_BY_NAME[n] for n in late])
    finally:
        run.save()
        md = table(run.result)
        Path(args.out).with_suffix(".md").write_text(md + "\n")
        print(md, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
