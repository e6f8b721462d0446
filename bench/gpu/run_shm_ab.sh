#!/usr/bin/env bash
# Issue 13's lever "the Python backend's shared-memory settings" on the GPU host, in one short call
# (about 3 minutes): the `sentiment` gpu_torch repository (build_served.py) served at CONCURRENCY
# (default 1,512) by a server with Triton 2.51's defaults (each Python-backend instance: a 1 MiB
# shared-memory region, growing 1 MiB at a time) and by one with SHM_BYTES (default 64 MiB) for
# both, in ROUNDS (default 2) interleaved rounds, a fresh server per arm and round, order
# alternating. Table: $OUT/shm_ab.txt (ab_rows); the sweeps: $OUT/<arm>_<round>.json.
# Prepare: `make gpu-pack`; device tool, carry .device:  [ROUNDS=2] [SHM_BYTES=...] bash bench/gpu/run_shm_ab.sh
set -uo pipefail
cd "$(dirname "$0")/../.."
WORK=${WORK:-/tmp/trtserve-gpu}
SHM=${SHM_BYTES:-67108864}
source bench/gpu/device_env.sh
# 8 instances share /dev/shm with the stubs' messages: at most a sixteenth of what is free each
FREE=$(( $(df -k --output=avail /dev/shm | tail -1) * 1024 ))
(( SHM > FREE / 16 )) && SHM=$(( FREE / 16 ))
log "/dev/shm free $FREE bytes; the shm arm's region: $SHM bytes"
setup_perf_analyzer
build_served_sentiment || exit 1
arm() {  # arm NAME ROUND [tritonserver options as --server-arg=...]
    local name=$1 round=$2; shift 2
    step "${name}_$round" 80 "$STUB_PY" bench/gpu/pa_bench.py --texts "$DEV/data/texts.txt" \
        --repository "$WORK/repository" --label "$name" --deployments sentiment --no-check \
        --concurrency "${CONCURRENCY:-1,512}" "$@" --out "$PARTS/${name}_$round.json" --log "$PARTS/triton_${name}_$round.log"
}
SHM_ARGS=(--server-arg="--backend-config=python,shm-default-byte-size=$SHM"
          --server-arg="--backend-config=python,shm-growth-byte-size=$SHM")
for round in $(seq 1 "${ROUNDS:-2}"); do
    if (( round % 2 )); then arm default "$round"; arm shm "$round" "${SHM_ARGS[@]}"
    else arm shm "$round" "${SHM_ARGS[@]}"; arm default "$round"; fi
done
ab_rows default shm | tee "$OUT/shm_ab.txt"
cp "$PARTS"/default_*.json "$PARTS"/shm_*.json "$OUT/" 2>/dev/null
