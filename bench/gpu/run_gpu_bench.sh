#!/usr/bin/env bash
# The repository's GPU benchmark (`make gpu-bench`): everything in one call on the GPU machine.
#
#   1. set up (device_env.sh): the slimmed Triton 2.51 server tree, a Python 3.12 venv for the
#      Python-backend stubs (numpy 1.26 + a .pth to the image's torch/tokenizers) that also holds
#      the gRPC client; perf_analyzer (the perf-analyzer wheel) as the outside client;
#   2. engine_bench.py  --lean (image python) raw engine: BERT-base, HF eager vs TorchScript fp16/hybrid
#                       + CUDA graphs at batch 1/32/128/256 x 128 (run after 4-6, in the time left);
#   3. compile_bench.py (image python) engine fusion: torch.compile variants of BERT-base fp16 (same);
#   4. build_served.py  (image python) `sentiment` and `embed` gpu_torch repositories through the
#                       project's stages (MiniLM architecture, random weights: the checkpoints do
#                       not fit a run): the default topology (one Python model per deployment),
#                       the three-step ensemble of the same engines, and both floors;
#   5. inprocess_bench.py (stub venv) the same Pipeline in-process: tokenizer, raw engine, one text;
#   6. pa_bench.py      (stub venv) perf_analyzer sweeps: single, ensemble, floor_single, floor_ensemble;
#   7. report.py        targets, JSON + CSV + markdown table.
#
# Prepare on the CPU machine with bench/gpu/pack_device.sh, then through the device tool:
#     bash bench/gpu/run_gpu_bench.sh            (carry: .device)
# Knobs: ENGINE=0 skips 2, COMPILE_VARIANTS="" skips 3, CONCURRENCY (default 1,16,64,128,256).
# Results: $OUT/gpu_bench.{json,csv,md}, $OUT/run.log, $OUT/parts.tgz (parts + Triton logs).
set -uo pipefail
cd "$(dirname "$0")/../.."
WORK=${WORK:-/tmp/trtserve-gpu}
BUDGET_S=${BUDGET_S:-560}   # the device tool stops a command at 600 s
CONCURRENCY=${CONCURRENCY:-1,16,64,128,256,512}
COMPILE_VARIANTS=${COMPILE_VARIANTS-compile + freezing + own CUDA graph,compile max-autotune-no-cudagraphs + freezing + own CUDA graph}
source bench/gpu/device_env.sh

setup_perf_analyzer
left() { echo $(( BUDGET_S - $(elapsed) )); }

# Served first (the issue's main numbers), then the engine measurements in the time left.
# ---- 4. the served repositories ------------------------------------------------------------------
step build_served 100 "${IMG[@]}" bench/gpu/build_served.py --data "$DEV/data" --work "$WORK" \
    --out "$PARTS/build_served.json" --skip-cpu-trace || { log "no repository: skipping the served measurements"; exit 1; }

# ---- 5. in-process baselines (the stub's environment) ---------------------------------------------
step inprocess 80 "$STUB_PY" bench/gpu/inprocess_bench.py --repository "$WORK/repository" \
    --texts "$DEV/data/texts.txt" --out "$PARTS/inprocess.json"

# ---- 6. served, perf_analyzer ---------------------------------------------------------------------
PA=("$STUB_PY" bench/gpu/pa_bench.py --texts "$DEV/data/texts.txt")
step served_single 160 "${PA[@]}" --repository "$WORK/repository" --label single --reference "$WORK/reference.json" \
    --concurrency "$CONCURRENCY" --out "$PARTS/served_single.json" --log "$PARTS/triton_single.log"
step floor_single 50 "${PA[@]}" --repository "$WORK/floor_single" --label floor_single --no-check \
    --deployments sentiment --concurrency 1,64,256 --out "$PARTS/floor_single.json" --log "$PARTS/triton_floor_single.log"
step served_ensemble 60 "${PA[@]}" --repository "$WORK/repository_ensemble" --label ensemble \
    --reference "$WORK/reference.json" --deployments sentiment --concurrency 1,64,256 \
    --out "$PARTS/served_ensemble.json" --log "$PARTS/triton_ensemble.log"
step floor_ensemble 50 "${PA[@]}" --repository "$WORK/floor_ensemble" --label floor_ensemble --no-check \
    --deployments sentiment --concurrency 1,64,256 --out "$PARTS/floor_ensemble.json" --log "$PARTS/triton_floor_ensemble.log"

# ---- 2-3. raw engine, fusion (in the time left) ---------------------------------------------------
if [ "${ENGINE:-1}" = 1 ] && [ "$(left)" -gt 120 ]; then
    step engine 110 "${IMG[@]}" bench/gpu/engine_bench.py --lean --out "$PARTS/engine.json"
fi
if [ -n "$COMPILE_VARIANTS" ] && [ "$(left)" -gt 60 ]; then
    step compile $(( $(left) - 15 )) "${IMG[@]}" bench/gpu/compile_bench.py --out "$PARTS/compile.json" \
        --variants "$COMPILE_VARIANTS" --budget-s $(( $(left) - 60 ))
fi
# experiments: one instance of the one model (what concurrency 1 costs with warm caches, one CUDA
# context) and 12 instead of "auto" (8 on 16 cores)
if [ "$(left)" -gt 40 ]; then
    step served_single_x1 35 "${PA[@]}" --repository "$WORK/repository" --label single_x1 --no-check --instances 1 \
        --deployments sentiment --concurrency 1,16 --out "$PARTS/served_single_x1.json" --log "$PARTS/triton_x1.log"
fi
if [ "$(left)" -gt 60 ]; then
    step served_single_x12 55 "${PA[@]}" --repository "$WORK/repository" --label single_x12 --no-check --instances 12 \
        --deployments sentiment --concurrency 256,512 --out "$PARTS/served_single_x12.json" --log "$PARTS/triton_x12.log"
fi

# ---- 7. report -------------------------------------------------------------------------------------
step report 30 "$IMAGE_PY" bench/gpu/report.py --parts "$PARTS" --json "$OUT/gpu_bench.json" --csv "$OUT/gpu_bench.csv" \
    --markdown "$OUT/gpu_bench.md"
[ -f "$OUT/gpu_bench.md" ] && cat "$OUT/gpu_bench.md"
