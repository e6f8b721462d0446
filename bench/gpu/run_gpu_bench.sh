#!/usr/bin/env bash
# The repository's GPU benchmark: everything in one call on the GPU machine (issue 5).
#
#   1. set up: the slimmed Triton 2.51 server tree (nvidia-pytriton wheel), a Python 3.12 venv
#      for the Python-backend stubs (numpy 1.26 + a .pth to the image's torch/tokenizers) that
#      also holds the gRPC client, tritonclient for the image's python;
#   2. engine_bench.py   (image python) raw engine: BERT-base, HF eager fp32/fp16 vs TorchScript
#                        fp16/hybrid + CUDA graphs, batch 1/8/32 x seq 128/384 (+ larger batches);
#   3. build_served.py   (image python) the sentiment gpu_torch repository through the project's
#                        build stages (MiniLM architecture, random weights; the 90 MB checkpoint
#                        does not fit a run);
#   4. inprocess_bench.py (stub venv) tokenizer ceiling, raw served engine, in-process pipeline;
#   5. serve_bench.py    (stub venv) the embedded Triton over gRPC: correctness, c=1 p50/p95,
#                        concurrency sweep, dynamic batches, stage times; then two experiments
#                        (more CPU/encoder instances; encoder output copied to host in the encoder);
#   6. report.py         targets + markdown table.
#
# Prepare on the CPU machine with bench/gpu/pack_device.sh, then run through the device tool:
#     bash bench/gpu/run_gpu_bench.sh            (carry: .device)   QUICK=1 for a ~2 minute smoke run
# Results: $OUT/gpu_bench.json, $OUT/gpu_bench.md, $OUT/run.log, $OUT/parts.tgz (parts + Triton logs).
# DRY_RUN_CPU=1 (with DEV= a .device made for the local Python) rehearses the plumbing without a
# GPU: no engine step, an fp32 CPU encoder instance, same server, clients and report.
set -uo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
OUT=${OUT:-$ROOT/.device/out}
QUICK=${QUICK:-0}
DEV=${DEV:-$ROOT/.device}
DRY_RUN_CPU=${DRY_RUN_CPU:-0}
WORK=${WORK:-/tmp/trtserve-gpu}
PARTS=$WORK/parts
IMAGE_PY=${IMAGE_PY:-$(command -v python3)}
BUDGET_S=${BUDGET_S:-540}   # the device tool stops a command at 600 s
# ---- 1. environment --------------------------------------------------------------------------
source bench/gpu/device_env.sh
log "quick=$QUICK"

Q=(); [ "$QUICK" = 1 ] && Q=(--quick)
BUILD_DEV=(); INPROC_DEV=(); SERVE_DEV=()
if [ "$DRY_RUN_CPU" = 1 ]; then
    BUILD_DEV=(--device cpu --precision fp32 --skip-cpu-trace); INPROC_DEV=(--device cpu); SERVE_DEV=(--force-cpu)
fi
IMG=(env "PYTHONPATH=$IMAGE_PYTHONPATH" "$IMAGE_PY")   # an array, not a function: `timeout` runs it

# ---- 2. raw engine -----------------------------------------------------------------------------
[ "$DRY_RUN_CPU" = 1 ] || step engine 200 "${IMG[@]}" bench/gpu/engine_bench.py --out "$PARTS/engine.json" "${Q[@]}"

# ---- 3. the served repository ------------------------------------------------------------------
step build_served 150 "${IMG[@]}" bench/gpu/build_served.py --data "$DEV/data" --work "$WORK" --out "$PARTS/build_served.json" "${BUILD_DEV[@]}" \
    || { log "no repository: skipping the served measurements"; exit 1; }

# ---- 4. in-process baselines (the stub's environment) ------------------------------------------
step inprocess 120 "$STUB_PY" bench/gpu/inprocess_bench.py --repository "$WORK/repository" \
    --texts "$DEV/data/texts.txt" --out "$PARTS/inprocess.json" "${Q[@]}" "${INPROC_DEV[@]}"

# ---- 5. served -----------------------------------------------------------------------------------
SERVE=("$STUB_PY" bench/gpu/serve_bench.py --repository "$WORK/repository" --texts "$DEV/data/texts.txt"
       --reference "$WORK/reference.json" "${SERVE_DEV[@]}")
if [ "$QUICK" = 1 ]; then
    step served 150 "${SERVE[@]}" --out "$PARTS/served.json" --log "$PARTS/triton_served.log" \
        --concurrency 1,8 --client-batched 8x8 --encoder-direct 8x8 --seconds 2 --c1-requests 200
    step served_scaled 80 "${SERVE[@]}" --out "$PARTS/served_scaled.json" --log "$PARTS/triton_scaled.log" \
        --instances tokenizer:2,encoder:2,postprocess:2 --skip-c1 --concurrency 8 --client-batched "" --seconds 2
else
    step served 220 "${SERVE[@]}" --out "$PARTS/served.json" --log "$PARTS/triton_served.log" \
        --concurrency 1,2,4,8,16,32,64,128 --client-batched 16x8,64x8 --encoder-direct 1x1,16x8,64x8 \
        --seconds 5 --c1-requests 1000
    if [ "$(elapsed)" -lt $(( BUDGET_S - 110 )) ]; then
        step served_scaled 100 "${SERVE[@]}" --out "$PARTS/served_scaled.json" --log "$PARTS/triton_scaled.log" \
            --instances tokenizer:4,encoder:2,postprocess:4 --skip-c1 --concurrency 16,32,64,128 \
            --client-batched 64x8 --seconds 5
    else
        log "skipping served_scaled: $(elapsed)s spent"
    fi
    if [ "$(elapsed)" -lt $(( BUDGET_S - 70 )) ]; then
        step served_hostout 80 "${SERVE[@]}" --out "$PARTS/served_hostout.json" --log "$PARTS/triton_hostout.log" \
            --encoder-output cpu --concurrency 16,64 --client-batched "" --seconds 4 --c1-requests 1000
    else
        log "skipping served_hostout: $(elapsed)s spent"
    fi
fi

# ---- 6. report -------------------------------------------------------------------------------------
step report 60 "$IMAGE_PY" bench/gpu/report.py --parts "$PARTS" --json "$OUT/gpu_bench.json" --markdown "$OUT/gpu_bench.md"
[ -f "$OUT/gpu_bench.md" ] && cat "$OUT/gpu_bench.md"
