#!/usr/bin/env bash
# A/B of how the torch engine waits for the GPU before copying results to the host (issue 13's
# sentiment peak, which is bound by the host's CPU): TRTSERVE_CUDA_SYNC=spin (the default: the
# copy's own spin-wait, every stub burning a core while its batch runs) against "blocking" (a
# blocking CUDA event: the stub sleeps). Session 7: blocking lost (peak -5%, c=1 +0.2 ms). One device call of about 3 minutes: the sentiment gpu_torch
# repository (build_served.py, no floors), then perf_analyzer at 1 and 512 clients, spin and
# blocking interleaved, two rounds, each in a fresh server. Results: $OUT/sync_ab.md, parts.tgz.
# Prepare: `make gpu-pack`; device tool, carry .device (without gpt2-tokenizer and the archive).
set -uo pipefail
cd "$(dirname "$0")/../.."
WORK=${WORK:-/tmp/trtserve-gpu}
source bench/gpu/device_env.sh
setup_perf_analyzer
build_served_sentiment || exit 1
PA=("$STUB_PY" bench/gpu/pa_bench.py --texts "$DEV/data/texts.txt" --repository "$WORK/repository" --no-check
    --deployments sentiment --concurrency 1,512 --measurement-ms 3000)
summary() {
    echo "# CUDA sync A/B, sentiment gpu_torch, 8 instances ($(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader))"
    ab_rows spin blocking
}
for round in 1 2; do
    for mode in spin blocking; do
        TRTSERVE_CUDA_SYNC=$mode step "${mode}_$round" 75 "${PA[@]}" --label "${mode}_$round" \
            --out "$PARTS/${mode}_$round.json" --log "$PARTS/triton_${mode}_$round.log"
        summary > "$OUT/sync_ab.md" 2>&1
    done
done
cat "$OUT/sync_ab.md"
