"""Merge the GPU benchmark's parts into one JSON, check the issue's targets, write a markdown report.

    python bench/gpu/report.py --parts DIR --json gpu_bench.json --markdown gpu_bench.md
    python bench/gpu/report.py --merged docs/results/gpu/<run>/gpu_bench.json --json ... --markdown ...

Parts (written by run_gpu_bench.sh): engine.json, build_served.json, inprocess.json, served.json
and, when run, served_scaled.json (more model instances) and served_hostout.json (the encoder
copies its output to host memory itself instead of handing it over on the GPU). Needs only the standard library.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

TARGETS = {
    "engine_1x128_p50_ms": ("<=", 1.0),
    "engine_best_seq_per_s_at_128": (">=", 20000.0),
    "served_vs_raw_engine_at_same_batch": (">=", 0.70),
    "ensemble_overhead_p50_ms_c1": ("<=", 0.5),
}
ENGINE_LABEL = "engine fp16 sdpa + CUDA graphs"
STAGE_ROLES = ("tokenizer", "encoder", "postprocess")


def load_parts(folder: Path) -> dict:
    parts = {}
    for name in ("engine", "build_served", "inprocess", "served", "served_scaled", "served_hostout"):
        path = folder / f"{name}.json"
        if path.exists():
            parts[name] = json.loads(path.read_text())
    return parts


def _row(rows, label, batch, seq):
    return next((r for r in rows if r["engine"] == label and r["batch"] == batch and r["seq"] == seq), None)


def _nearest_batch(measured: dict, mean_batch: float) -> str:
    """The measured raw-engine batch closest to ``mean_batch`` (log scale)."""
    return min(measured, key=lambda b: abs(math.log(int(b)) - math.log(max(mean_batch, 1.0))))


def stage_busy(step: dict, instances: dict, model: str = "sentiment") -> dict[str, float]:
    """Share of the step's wall time each model's instances spent executing (1.0 = saturated)."""
    out = {}
    for role in STAGE_ROLES:
        s = step["stages"].get(f"{model}_{role}")
        window = step.get("stats_window_s") or step.get("seconds")
        if not s or not window:
            continue
        per_exec = s["compute_input_us_per_exec"] + s["compute_infer_us_per_exec"] + s["compute_output_us_per_exec"]
        # per execution, from batch_stats: the time an instance was busy with this model
        out[role] = s["executions"] * per_exec / 1e6 / window / instances.get(role, 1)
    return out


def best_step(served: dict) -> dict | None:
    """The sweep step with the most texts/s among error-free single-text requests to the ensemble."""
    single = [s for s in served.get("sweep", []) if s["texts_per_request"] == 1 and not s["errors"]
              and s.get("model", "sentiment") == "sentiment"]
    return max(single, key=lambda s: s["texts_per_s"]) if single else None


def evaluate(parts: dict) -> dict:
    targets: dict = {}
    engine = parts.get("engine", {})
    rows = engine.get("rows", [])
    r = _row(rows, ENGINE_LABEL, 1, 128)
    if r:
        targets["engine_1x128_p50_ms"] = {"value": r["p50_ms"], "where": f"{ENGINE_LABEL}, 1x128"}
    at128 = [x for x in rows if "CUDA graphs" in x["engine"] and x["seq"] == 128]
    if at128:
        top = max(at128, key=lambda x: x["throughput_per_s"])
        targets["engine_best_seq_per_s_at_128"] = {"value": top["throughput_per_s"],
                                                   "where": f"{top['engine']}, batch {top['batch']}"}
    served, inproc = parts.get("served", {}), parts.get("inprocess", {})
    step = best_step(served)
    if step and inproc.get("engine"):
        enc = step["stages"]["sentiment_encoder"]
        batch = _nearest_batch(inproc["engine"], enc["mean_batch"])
        raw = inproc["engine"][batch]["texts_per_s"]
        targets["served_vs_raw_engine_at_same_batch"] = {
            "value": step["texts_per_s"] / raw,
            "where": f"served {step['texts_per_s']:.0f} texts/s at concurrency {step['concurrency']} (encoder mean "
                     f"batch {enc['mean_batch']:.1f}) vs raw engine {raw:.0f} texts/s at batch {batch}"}
    if served.get("c1") and inproc.get("pipeline_one_text"):
        targets["ensemble_overhead_p50_ms_c1"] = {
            "value": served["c1"]["p50_ms"] - inproc["pipeline_one_text"]["p50_ms"],
            "where": f"served p50 {served['c1']['p50_ms']:.3f} ms (gRPC client included) - in-process "
                     f"tokenizer+engine+postprocess p50 {inproc['pipeline_one_text']['p50_ms']:.3f} ms"}
    for name, t in targets.items():
        op, bound = TARGETS[name]
        t["target"] = f"{op} {bound:g}"
        t["met"] = t["value"] <= bound if op == "<=" else t["value"] >= bound
    return targets


def c1_breakdown(served: dict) -> dict:
    """Where the mean time of one request at concurrency 1 goes (Triton statistics vs the client)."""
    c1 = served.get("c1")
    if not c1:
        return {}
    st = c1["stages"]
    ensemble = st["sentiment"]["request_us"]
    roles = {role: st[f"sentiment_{role}"]["request_us"] for role in STAGE_ROLES}
    return {"client_mean_us": c1["mean_ms"] * 1e3, "server_ensemble_us": ensemble, **{f"{k}_us": v for k, v in roles.items()},
            "ensemble_scheduling_us": ensemble - sum(roles.values()),
            "grpc_and_client_us": c1["mean_ms"] * 1e3 - ensemble}


def hop_overheads(breakdown: dict, inproc: dict) -> dict[str, float]:
    """Per model at concurrency 1: Triton's time for one request minus the same work in-process (us)."""
    stages = inproc.get("pipeline_stages_p50_ms", {})
    names = {"tokenizer": "tokenize", "encoder": "engine", "postprocess": "postprocess"}
    return {role: breakdown[f"{role}_us"] - stages[names[role]] * 1e3
            for role in STAGE_ROLES if f"{role}_us" in breakdown and names[role] in stages}


def fmt(x, digits=2):
    return "-" if x is None else f"{x:,.{digits}f}"


def markdown(result: dict) -> str:
    parts, machine = result["parts"], result["machine"]
    lines = [f"# GPU benchmark: {machine.get('gpu', '?')}, driver {machine.get('driver', '?')}, {machine.get('date_utc', '?')}",
             "",
             f"torch {machine.get('torch')} (CUDA {machine.get('cuda_runtime')}), transformers "
             f"{parts.get('engine', {}).get('transformers', '?')}, {machine.get('cpus')} CPU cores. "
             "Made by `bench/gpu/run_gpu_bench.sh` in one call on the GPU machine.", ""]
    lines += ["## Targets", "", "| target | value | bound | met | where |", "|---|---:|---|---|---|"]
    for name, t in result["targets"].items():
        lines.append(f"| {name} | {fmt(t['value'], 3)} | {t['target']} | {'yes' if t['met'] else '**no**'} | {t['where']} |")
    engine = parts.get("engine")
    if engine:
        rows = engine["rows"]
        shapes = sorted({(r["batch"], r["seq"]) for r in rows if r["engine"].startswith("HF")}, key=lambda s: (s[1], s[0]))
        labels = list(dict.fromkeys(r["engine"] for r in rows))
        lines += ["", "## Raw engine: BERT-base in-process (p50 ms / sequences per s)", "",
                  f"{engine['model']}. HF attention: {engine.get('hf_attention')}. {engine['timing']}.", "",
                  "| engine | " + " | ".join(f"{b}x{s}" for b, s in shapes) + " |",
                  "|---|" + "---:|" * len(shapes)]
        for label in labels:
            cells = []
            for b, s in shapes:
                r = _row(rows, label, b, s)
                cells.append(f"{r['p50_ms']:.3f} / {r['throughput_per_s']:,.0f}" if r else "-")
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        big = sorted({r["batch"] for r in rows if r["seq"] == 128 and r["batch"] > 32})
        if big:
            lines += ["", "Larger batches at sequence 128 (p50 ms / sequences per s):", "",
                      "| engine | " + " | ".join(f"{b}x128" for b in big) + " |", "|---|" + "---:|" * len(big)]
            for label in labels:
                cells = [(_row(rows, label, b, 128)) for b in big]
                if any(cells):
                    lines.append(f"| {label} | " + " | ".join(
                        f"{c['p50_ms']:.3f} / {c['throughput_per_s']:,.0f}" if c else "-" for c in cells) + " |")
        breakdown = engine.get("kernel_breakdown", {})
        if breakdown:
            cats = sorted({c for b in breakdown.values() for c in b.get("ms_per_forward", {})})
            lines += ["", "Where the GPU time of one forward goes (torch.profiler, TorchScript without graphs, ms):", "",
                      "| engine | shape | " + " | ".join(cats) + " | total | GEMM TFLOP/s |",
                      "|---|---|" + "---:|" * (len(cats) + 2)]
            for label, b in breakdown.items():
                if "error" in b:
                    lines.append(f"| {label} | profiler failed: {b['error'][:80]} |")
                    continue
                lines.append(f"| {label} | {b['shape']} | " + " | ".join(fmt(b['ms_per_forward'].get(c), 3) for c in cats)
                             + f" | {b['total_ms']:.3f} | {b['gemm_tflops']:.0f} |")
        lines += ["", "Fidelity against FP32 (random padded inputs; min cosine over rows, max |diff|):", "",
                  "| output | traced vs eager (same precision) | vs FP32 cosine | vs FP32 max abs diff |", "|---|---:|---:|---:|"]
        for name, f in engine.get("fidelity", {}).items():
            lines.append(f"| {name} | {f['trace_vs_eager']['min_cosine']:.7f} | {f['vs_fp32']['min_cosine']:.7f} | "
                         f"{f['vs_fp32']['max_abs_diff']:.3g} |")
    served, inproc = parts.get("served"), parts.get("inprocess")
    if served and inproc:
        build = parts.get("build_served", {})
        ts = build.get("torchscript", {})
        lines += ["", "## Served `sentiment` ensemble over gRPC", "",
                  f"Encoder: {build.get('weights', '?')}, TorchScript {ts.get('precision')} ({ts.get('attention')} "
                  f"attention) + CUDA graphs, {inproc.get('graphs')} graphs captured in {fmt(inproc.get('capture_seconds'), 1)} s; "
                  f"real tokenizer and postprocess; texts: {inproc['texts']} Rotten Tomatoes snippets "
                  f"(tokens p50 {inproc['token_lengths']['p50']:.0f}, p95 {inproc['token_lengths']['p95']:.0f}). "
                  f"{served['clients']}.", ""]
        c = served.get("correctness", {})
        if c:
            lines.append(f"Correctness against the FP32 model with the same weights ({c['texts']} texts): max |diff| of "
                         f"probabilities {c['batched_max_abs_diff']:.2g} (one batched request), "
                         f"{c['single_max_abs_diff']:.2g} (single-text requests), "
                         f"{c.get('concurrent_max_abs_diff', float('nan')):.2g} (concurrent single-text requests, "
                         f"mixed-length executions), label agreement {c['label_agreement']:.0%}.")
        if build.get("cpu_trace_retargeted_vs_gpu_trace"):
            x = build["cpu_trace_retargeted_vs_gpu_trace"]
            lines.append(f"CPU build path (traced on the CPU, {x['retargeted_constants']} device constants retargeted, "
                         f"run on the GPU) vs the GPU trace: min cosine {x['min_cosine']:.7f}, max |diff| {x['max_abs_diff']:.2g}.")
        if served.get("c1"):
            b = result["c1_breakdown"]
            lines += ["", f"Concurrency 1: p50 **{served['c1']['p50_ms']:.3f} ms**, p95 {served['c1']['p95_ms']:.3f} ms "
                      f"(in-process tokenizer+engine+postprocess p50 {inproc['pipeline_one_text']['p50_ms']:.3f} ms: "
                      + ", ".join(f"{k} {v:.3f}" for k, v in inproc['pipeline_stages_p50_ms'].items()) + ").",
                      f"Mean time of one request, from Triton's statistics: tokenizer {b['tokenizer_us']:.0f} us, "
                      f"encoder {b['encoder_us']:.0f} us, postprocess {b['postprocess_us']:.0f} us, ensemble scheduling "
                      f"{b['ensemble_scheduling_us']:.0f} us (server total {b['server_ensemble_us']:.0f} us); gRPC + "
                      f"Python client {b['grpc_and_client_us']:.0f} us (client mean {b['client_mean_us']:.0f} us).",
                      "Each Python-backend hop's cost beyond the in-process work (Triton's mean minus the in-process "
                      "p50): " + ", ".join(f"{k} {v:.0f} us" for k, v in hop_overheads(b, inproc).items()) + "."]
        for key, title in (("served", "as generated"), ("served_scaled", "more model instances"),
                           ("served_hostout", "encoder output copied to host memory inside the encoder "
                                              "(output_device cpu)")):
            run = parts.get(key)
            if not run:
                continue
            instances = run.get("instances") or {}
            lines += ["", f"Sweep, {title}" + (f" ({', '.join(f'{k} x{v}' for k, v in instances.items())})" if instances else "")
                      + (f", c=1 p50 {run['c1']['p50_ms']:.3f} ms" if key != "served" and run.get("c1") else "") + ":", "",
                      "| requests to | clients | texts/request | texts/s | p50 ms | p95 ms | errors | encoder batch (mean; histogram) | "
                      "tokenizer batch | busy: tokenizer / encoder / postprocess |",
                      "|---|---:|---:|---:|---:|---:|---:|---|---:|---|"]
            for s in run.get("sweep", []):
                enc, tok = s["stages"].get("sentiment_encoder", {}), s["stages"].get("sentiment_tokenizer", {})
                hist = ", ".join(f"{k}:{v}" for k, v in list(enc.get("batch_histogram", {}).items())[:8])
                busy = stage_busy(s, instances)
                target = "encoder only" if s.get("model", "sentiment") != "sentiment" else "ensemble"
                lines.append(f"| {target} | {s['concurrency']} | {s['texts_per_request']} | {s['texts_per_s']:,.0f} | "
                             f"{fmt(s.get('p50_ms'))} | {fmt(s.get('p95_ms'))} | {s['errors']} | "
                             f"{enc.get('mean_batch', 0):.1f}; {hist} | {tok.get('mean_batch', 0):.1f} | "
                             + " / ".join(f"{busy.get(r, 0):.0%}" for r in STAGE_ROLES) + " |")
        step = best_step(served)
        if step:
            lines += ["", f"Stage times at the best single-text step (concurrency {step['concurrency']}; Triton counts the "
                      "whole statistics window, warm-up and tail included):", "",
                      "| model | executions/s | mean batch | queue us/request | compute us/execution (input + infer + output) |",
                      "|---|---:|---:|---:|---:|"]
            for name, s in step["stages"].items():
                window = step.get("stats_window_s") or step["seconds"]
                lines.append(f"| {name} | {s['executions'] / window:,.0f} | {s['mean_batch']:.1f} | {s['queue_us']:.0f} | "
                             f"{s['compute_input_us_per_exec']:.0f} + {s['compute_infer_us_per_exec']:.0f} + "
                             f"{s['compute_output_us_per_exec']:.0f} |")
        direct = [x for x in served.get("sweep", []) if x.get("model", "sentiment") != "sentiment"]
        if direct:
            lines += ["", "Requests straight to the encoder (token tensors over gRPC) against the raw engine at the "
                      "nearest measured batch:", ""]
            for x in direct:
                enc = x["stages"].get("sentiment_encoder", {})
                b = _nearest_batch(inproc["engine"], enc.get("mean_batch", 1.0))
                raw = inproc["engine"][b]["texts_per_s"]
                lines.append(f"- {x['concurrency']} clients x {x['texts_per_request']} rows: {x['texts_per_s']:,.0f} rows/s, "
                             f"encoder batch {enc.get('mean_batch', 0):.1f}, {x['texts_per_s'] / raw:.0%} of the raw "
                             f"engine's {raw:,.0f} rows/s at batch {b}.")
        lines += ["", "In-process baselines of the served model (same files the server loads):", "",
                  "| batch | raw engine texts/s | p50 ms | sequence buckets |", "|---:|---:|---:|---|"]
        for batch, e in inproc["engine"].items():
            lines.append(f"| {batch} | {e['texts_per_s']:,.0f} | {e['p50_ms']:.3f} | "
                         + ", ".join(f"{k}:{v}" for k, v in e["sequence_buckets"].items()) + " |")
        lines += ["", "Tokenizer alone (one thread, as the tokenizer model runs it): "
                  + ", ".join(f"{k.split('_')[0]} requests per execution {v['texts_per_s']:,.0f} texts/s"
                              for k, v in inproc["tokenizer"].items()) + "."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--parts", help="folder of part JSON files (run_gpu_bench.sh)")
    source.add_argument("--merged", help="a gpu_bench.json written earlier: re-render its report")
    parser.add_argument("--json", required=True)
    parser.add_argument("--markdown", required=True)
    args = parser.parse_args(argv)
    parts = load_parts(Path(args.parts)) if args.parts else json.loads(Path(args.merged).read_text())["parts"]
    machine = parts.get("engine", {}).get("machine") or parts.get("build_served", {}).get("machine") or {}
    result = {"machine": machine, "targets": evaluate(parts), "c1_breakdown": c1_breakdown(parts.get("served", {})),
              "parts": parts}
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    Path(args.markdown).write_text(markdown(result))
    for name, t in result["targets"].items():
        print(f"{name}: {t['value']:.3f} (target {t['target']}) -> {'MET' if t['met'] else 'MISSED'}; {t['where']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
