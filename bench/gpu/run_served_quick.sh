#!/usr/bin/env bash
# The served half of `make gpu-bench` alone, in about 5 minutes: the sentiment and embed gpu_torch
# repositories (build_served.py, no floors or ensemble), the in-process baselines, perf_analyzer at
# CONCURRENCY (default 1,16,512), and report.py's targets (the c=1 target is served p50 minus
# in-process p50, both from this run). For a change to the served path when the device budget
# does not allow the whole benchmark. Results: $OUT/gpu_bench.{json,csv,md}, run.log, parts.tgz.
# Prepare: `make gpu-pack`; device tool, carry .device (without gpt2-tokenizer and the archive).
set -uo pipefail
cd "$(dirname "$0")/../.."
WORK=${WORK:-/tmp/trtserve-gpu}
CONCURRENCY=${CONCURRENCY:-1,16,512}
source bench/gpu/device_env.sh
setup_perf_analyzer
step build_served 100 "${IMG[@]}" bench/gpu/build_served.py --data "$DEV/data" --work "$WORK" \
    --out "$PARTS/build_served.json" --skip-cpu-trace --no-floors || exit 1
step inprocess 80 "$STUB_PY" bench/gpu/inprocess_bench.py --repository "$WORK/repository" \
    --texts "$DEV/data/texts.txt" --out "$PARTS/inprocess.json"
step served_single 160 "$STUB_PY" bench/gpu/pa_bench.py --texts "$DEV/data/texts.txt" --repository "$WORK/repository" \
    --label single --reference "$WORK/reference.json" --concurrency "$CONCURRENCY" \
    --out "$PARTS/served_single.json" --log "$PARTS/triton_single.log"
step report 30 "$IMAGE_PY" bench/gpu/report.py --parts "$PARTS" --json "$OUT/gpu_bench.json" --csv "$OUT/gpu_bench.csv" \
    --markdown "$OUT/gpu_bench.md"
[ -f "$OUT/gpu_bench.md" ] && cat "$OUT/gpu_bench.md"
