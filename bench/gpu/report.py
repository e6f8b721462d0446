"""Merge the GPU benchmark's parts into one JSON, a CSV of every perf_analyzer step and a markdown
report with the issue's targets (met or missed, with the numbers that say why).

    python bench/gpu/report.py --parts DIR --json gpu_bench.json --csv gpu_bench.csv --markdown gpu_bench.md

Parts (run_gpu_bench.sh): engine.json, compile.json, build_served.json, inprocess.json and the
perf_analyzer sweeps served_single.json, served_ensemble.json, floor_single.json,
floor_ensemble.json. Standard library only.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
from pathlib import Path

PARTS = ("engine", "compile", "build_served", "inprocess", "served_single", "served_single_x1", "served_single_x12",
         "served_ensemble", "floor_single", "floor_ensemble")
SWEEPS = ("served_single", "served_single_x1", "served_single_x12", "served_ensemble", "floor_single", "floor_ensemble")
ENGINE_LABEL = "engine fp16 sdpa + CUDA graphs"
TARGETS = {  # name: (op, bound)
    "engine_best_seq_per_s_at_128": (">=", 22000.0),
    "engine_1x128_p50_ms": ("<=", 0.6),
    "sentiment_served_peak_per_s": (">=", 26000.0),
    "embed_served_peak_per_s": (">=", 26000.0),
    "sentiment_c1_p50_minus_inprocess_ms": ("<=", 0.8),
    "embed_c1_p50_minus_inprocess_ms": ("<=", 0.8),
    "sentiment_served_vs_raw_engine": (">=", 0.70),
    "embed_served_vs_raw_engine": (">=", 0.70),
}
CSV_FIELDS = ("part", "deployment", "concurrency", "infer_per_s", "p50_ms", "p95_ms", "p99_ms",
              "server_queue_ms", "server_compute_infer_ms", "engine_model_mean_batch", "gpu_util_mean_pct",
              "server_cores_busy", "perf_analyzer_cores_busy", "error")


def load_parts(folder: Path) -> dict:
    return {name: json.loads((folder / f"{name}.json").read_text()) for name in PARTS
            if (folder / f"{name}.json").exists()}


def engine_rows(parts: dict) -> list[dict]:
    return parts.get("engine", {}).get("rows", []) + parts.get("compile", {}).get("rows", [])


def engine_model(row: dict, deployment: str) -> dict:
    """Triton statistics of the model that runs the engine: the one model, or ``<name>_encoder``."""
    stages = row.get("stages", {})
    return stages.get(f"{deployment}_encoder") or stages.get(deployment) or {}


def server_cores(row: dict) -> float:
    busy = row.get("load", {}).get("cores_busy", {})
    return round(sum(v for k, v in busy.items() if k != "perf_analyzer"), 2)


def peak(sweep: list[dict]) -> dict | None:
    ok = [r for r in sweep if "infer_per_s" in r]
    return max(ok, key=lambda r: r["infer_per_s"]) if ok else None


def c1(sweep: list[dict]) -> dict | None:
    return next((r for r in sweep if r["concurrency"] == 1 and "p50_ms" in r), None)


def floor_peak(parts: dict) -> str:
    sweep = parts.get("floor_single", {}).get("deployments", {}).get("sentiment", {}).get("sweep", [])
    top = peak(sweep)
    return f"{top['infer_per_s']:,.0f}/s" if top else "?"


def nearest_batch(measured: dict, mean_batch: float) -> str:
    return min(measured, key=lambda b: abs(math.log(int(b)) - math.log(max(mean_batch, 1.0))))


def evaluate(parts: dict) -> dict:
    targets: dict = {}
    rows = engine_rows(parts)
    at128 = [r for r in rows if r["seq"] == 128 and ("CUDA graphs" in r["engine"] or "compile" in r["engine"])]
    if at128:
        top = max(at128, key=lambda r: r["throughput_per_s"])
        targets["engine_best_seq_per_s_at_128"] = {"value": top["throughput_per_s"],
                                                   "where": f"{top['engine']}, batch {top['batch']}"}
        ones = [r for r in at128 if r["batch"] == 1]
        best1 = min(ones, key=lambda r: r["p50_ms"]) if ones else None
        if best1:
            targets["engine_1x128_p50_ms"] = {"value": best1["p50_ms"], "where": best1["engine"]}
    served = parts.get("served_single", {}).get("deployments", {})
    inproc = parts.get("inprocess", {}).get("deployments", {})
    for name, entry in served.items():
        top, first, mine = peak(entry["sweep"]), c1(entry["sweep"]), inproc.get(name, {})
        if top:
            batch = engine_model(top, name).get("mean_batch", 0.0)
            targets[f"{name}_served_peak_per_s"] = {
                "value": top["infer_per_s"],
                "where": f"perf_analyzer c={top['concurrency']}, p50 {top['p50_ms']:.2f} ms, engine mean batch {batch}, "
                         f"GPU {top['load'].get('gpu_util_mean_pct')}%, server processes {server_cores(top)} of "
                         f"{top['load'].get('host_cores')} cores busy, perf_analyzer {top.get('client_cores_busy')} "
                         f"(host CPU-bound: a one-model do-nothing floor peaks at "
                         f"{floor_peak(parts)})"}
            if mine.get("engine"):
                raw_batch = "64" if "64" in mine["engine"] else nearest_batch(mine["engine"], 64)
                raw = mine["engine"][raw_batch]["texts_per_s"]
                same = nearest_batch(mine["engine"], batch)
                targets[f"{name}_served_vs_raw_engine"] = {
                    "value": top["infer_per_s"] / raw,
                    "where": f"served peak vs raw engine at batch {raw_batch} ({raw:,.0f} texts/s); at the served "
                             f"mean batch ({same}): {top['infer_per_s'] / mine['engine'][same]['texts_per_s']:.2f}"}
        if first and mine.get("pipeline_one_text"):
            p = mine["pipeline_one_text"]["p50_ms"]
            targets[f"{name}_c1_p50_minus_inprocess_ms"] = {
                "value": first["p50_ms"] - p,
                "where": f"served p50 {first['p50_ms']:.3f} ms (perf_analyzer) - in-process Pipeline.run p50 {p:.3f} ms"}
    for name, t in targets.items():
        op, bound = TARGETS[name]
        t["target"] = f"{op} {bound:g}"
        t["met"] = t["value"] <= bound if op == "<=" else t["value"] >= bound
    return targets


def csv_rows(parts: dict) -> list[dict]:
    out = []
    for part in SWEEPS:
        for name, entry in parts.get(part, {}).get("deployments", {}).items():
            for r in entry["sweep"]:
                out.append({"part": part, "deployment": name, "concurrency": r["concurrency"],
                            **{k: r.get(k) for k in CSV_FIELDS if k in r},
                            "engine_model_mean_batch": engine_model(r, name).get("mean_batch"),
                            "gpu_util_mean_pct": r.get("load", {}).get("gpu_util_mean_pct"),
                            "server_cores_busy": server_cores(r) if "load" in r else None,
                            "perf_analyzer_cores_busy": r.get("client_cores_busy")})
    return out


def fmt(x, digits=2) -> str:
    return "-" if x is None else f"{x:,.{digits}f}"


def markdown(result: dict) -> str:
    parts, m = result["parts"], result["machine"]
    lines = [f"# GPU benchmark: {m.get('gpu', '?')}, driver {m.get('driver', '?')}, {m.get('date_utc', '?')}", "",
             f"torch {m.get('torch')} (CUDA {m.get('cuda_runtime')}), {m.get('cpus')} CPU cores. Made by "
             "`make gpu-bench` (bench/gpu/run_gpu_bench.sh) in one call on the GPU machine; served numbers from "
             "perf_analyzer (C++, async gRPC, closed loop, one review snippet per request) on the same host.", "",
             "## Targets", "", "| target | measured | bound | met | where / why |", "|---|---:|---|---|---|"]
    for name, t in result["targets"].items():
        lines.append(f"| {name} | {fmt(t['value'], 3)} | {t['target']} | {'yes' if t['met'] else '**no**'} | {t['where']} |")
    rows = engine_rows(parts)
    if rows:
        shapes = sorted({(r["batch"], r["seq"]) for r in rows}, key=lambda s: (s[1], s[0]))
        labels = list(dict.fromkeys(r["engine"] for r in rows))
        lines += ["", "## Raw engine: BERT-base fp16 in-process (p50 ms / sequences per s)", "",
                  "| engine | " + " | ".join(f"{b}x{s}" for b, s in shapes) + " |", "|---|" + "---:|" * len(shapes)]
        for label in labels:
            cells = [next((r for r in rows if r["engine"] == label and (r["batch"], r["seq"]) == sh), None) for sh in shapes]
            lines.append(f"| {label} | " + " | ".join(f"{c['p50_ms']:.3f} / {c['throughput_per_s']:,.0f}" if c else "-"
                                                      for c in cells) + " |")
        comp = parts.get("compile", {})
        if comp.get("compile_s") or comp.get("errors"):
            lines += ["", f"Compile seconds per shape: {comp.get('compile_s')}; errors: {comp.get('errors') or 'none'}"]
        for label, b in parts.get("engine", {}).get("kernel_breakdown", {}).items():
            if "ms_per_forward" in b:
                lines += ["", f"GPU time of one {label} forward at {b['shape']} (ms): {b['ms_per_forward']}, total "
                              f"{b['total_ms']}, GEMM {b['gemm_tflops']:.0f} TFLOP/s"]
    inproc = parts.get("inprocess", {}).get("deployments", {})
    for name, mine in inproc.items():
        eng = mine.get("engine", {})
        lines += ["", f"## {name}: in-process (the served model's Pipeline, same files)", "",
                  f"Token length p50 {mine['token_lengths']['p50']:.0f}, p95 {mine['token_lengths']['p95']:.0f}; "
                  f"one text tokenizer+engine+postprocess p50 **{mine['pipeline_one_text']['p50_ms']:.3f} ms** "
                  f"(stages {mine['pipeline_stages_p50_ms']}); tokenizer "
                  + ", ".join(f"{k.split('_')[0]}/exec {v['texts_per_s']:,.0f}" for k, v in mine["tokenizer"].items())
                  + " texts/s (one thread).", "",
                  "| engine batch | " + " | ".join(eng) + " |", "|---|" + "---:|" * len(eng),
                  "| texts/s | " + " | ".join(f"{v['texts_per_s']:,.0f}" for v in eng.values()) + " |",
                  "| p50 ms | " + " | ".join(f"{v['p50_ms']:.3f}" for v in eng.values()) + " |"]
    lines += ["", "## Served (perf_analyzer)", "",
              "| topology | deployment | c | infer/s | p50 ms | p99 ms | engine-model batch | GPU % | server cores busy | "
              "perf_analyzer cores |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["csv"]:
        lines.append(f"| {r['part']} | {r['deployment']} | {r['concurrency']} | {fmt(r.get('infer_per_s'), 0)} | "
                     f"{fmt(r.get('p50_ms'), 3)} | {fmt(r.get('p99_ms'), 2)} | {fmt(r.get('engine_model_mean_batch'), 1)} | "
                     f"{fmt(r.get('gpu_util_mean_pct'), 0)} | {fmt(r.get('server_cores_busy'), 1)} | "
                     f"{fmt(r.get('perf_analyzer_cores_busy'), 1)} |" + (f" {r['error']}" if r.get("error") else ""))
    for part in SWEEPS:
        for name, entry in parts.get(part, {}).get("deployments", {}).items():
            if "correctness" in entry:
                lines.append(f"\n{part} {name} vs FP32 of the same weights: {entry['correctness']}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", required=True)
    parser.add_argument("--json", required=True)
    parser.add_argument("--csv", required=True)
    parser.add_argument("--markdown", required=True)
    args = parser.parse_args(argv)
    parts = load_parts(Path(args.parts))
    machine = next((p["machine"] for p in parts.values() if "machine" in p), {})
    result = {"machine": machine, "targets": evaluate(parts), "csv": csv_rows(parts), "parts": parts}
    Path(args.json).write_text(json.dumps(result, indent=2, default=str) + "\n")
    with open(args.csv, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(result["csv"])
    Path(args.markdown).write_text(markdown(result))
    print(json.dumps(result["targets"], indent=2))
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
