#!/usr/bin/env bash
# A/B of how Triton picks an idle instance (issue 13's c=1 target): "rotate", the "auto" instances
# in one group under Triton's default --rate-limit=off (idle instances wake in turn, so single
# requests rotate over all 8 stub processes and CUDA contexts: pa_bench.py --rotate), against
# "hot", the build's grouping (one preferred instance + a pool of 7, rate_limiter priority 1 vs
# 1e6, --rate-limit=execution_count: triton_config.preferred_instances). Session 8 ran it with the
# hot arm as the experiment (pa_bench --hot-instance, since folded into the build).
# One device call of about 7 minutes: the sentiment gpu_torch repository (build_served.py, no
# floors), then perf_analyzer at 1, 16 and 512 clients, the two arms interleaved, two rounds, each
# in a fresh server, with TRTSERVE_PHASE_TIMES=1 in both (the Triton logs then say how many
# executions each instance ran). Results: $OUT/hot_ab.md, parts.tgz.
# Prepare: `make gpu-pack`; device tool, carry .device (without gpt2-tokenizer and the archive).
set -uo pipefail
cd "$(dirname "$0")/../.."
WORK=${WORK:-/tmp/trtserve-gpu}
source bench/gpu/device_env.sh
setup_perf_analyzer
build_served_sentiment || exit 1
PA=("$STUB_PY" bench/gpu/pa_bench.py --texts "$DEV/data/texts.txt" --repository "$WORK/repository" --no-check
    --deployments sentiment --concurrency "${AB_CONCURRENCY:-1,16,512}" --measurement-ms 3000)
export TRTSERVE_PHASE_TIMES=1
summary() {
    echo "# instance choice A/B, sentiment gpu_torch, 8 instances ($(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader))"
    ab_rows rotate hot
    echo "executions per instance (phase-time lines at shutdown):"
    for f in "$PARTS"/triton_rotate_*.log "$PARTS"/triton_hot_*.log; do
        [ -f "$f" ] && echo "$(basename "$f"): $(grep -o 'phase times: [0-9]* executions' "$f" | awk '{print $3}' | tr '\n' ' ')"
    done
}
for round in 1 2; do
    for arm in rotate hot; do
        flag=(); [ "$arm" = rotate ] && flag=(--rotate)
        step "${arm}_$round" 100 "${PA[@]}" "${flag[@]}" --label "${arm}_$round" \
            --out "$PARTS/${arm}_$round.json" --log "$PARTS/triton_${arm}_$round.log"
        summary > "$OUT/hot_ab.md" 2>&1
    done
done
cat "$OUT/hot_ab.md"
