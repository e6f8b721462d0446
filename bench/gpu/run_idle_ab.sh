#!/usr/bin/env bash
# Issue 13's GPU c=1 target (served p50 <= in-process + 0.8 ms): does the host's handling of an
# idle core, or the benchmark's own GPU sampler, decide the served concurrency-1 time? One device
# call of about 4 minutes:
#   1. build_served.py: the `sentiment` gpu_torch repository (one Python model, 8 instances);
#   2. inprocess_bench.py: the same Pipeline in-process (back to back and after idle gaps);
#   3. bench/idle_ab.py: one server, perf_analyzer under each host condition (default: quiet, the
#      load-aware pollers of idle_poll_ms `poll`, the same spinning at any load `pollall`; others:
#      nvidia-smi polling, SCHED_IDLE spinners, PM QoS cpu_dma_latency=0, the preferred stub
#      pinned, combinations) at 1, 16 and 512 clients, interleaved rounds.
# Prepare: `make gpu-pack`; device tool, carry .device:  [ROUNDS=3] [CONDITIONS=...] [MODEL_POLL_MS=0] bash bench/gpu/run_idle_ab.sh
# (MODEL_POLL_MS: the idle_poll_ms the served deployment runs with; 0, the default here: off, so that
# "quiet" is no pollers at all and "poll" is the same pollers the default specs turn on)
set -uo pipefail
cd "$(dirname "$0")/../.."
WORK=${WORK:-/tmp/trtserve-gpu}
source bench/gpu/device_env.sh
setup_perf_analyzer
build_served_sentiment || exit 1
step inprocess 80 "$STUB_PY" bench/gpu/inprocess_bench.py --repository "$WORK/repository" \
    --texts "$DEV/data/texts.txt" --deployments sentiment --out "$PARTS/inprocess.json"
step idle_ab 480 "$STUB_PY" -m bench.idle_ab --repository "$WORK/repository" --deployment sentiment \
    --texts "$DEV/data/texts.txt" --rounds "${ROUNDS:-3}" --measurement-ms 2000 --log "$PARTS/triton_idle_ab.log" \
    --conditions "${CONDITIONS:-quiet,poll,pollall}" --concurrency "${CONCURRENCY:-1,16,512}" --out "$PARTS/idle_ab.json" \
    --model-poll-ms "${MODEL_POLL_MS:-0}"
cp "$PARTS/idle_ab.json" "$PARTS/inprocess.json" "$OUT/" 2>/dev/null
