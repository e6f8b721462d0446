#!/usr/bin/env bash
# Issue 13: what caps the served peak on the GPU host (the `sentiment` peak missed on slow hosts
# while `embed` met it), named with numbers, in one device call of about 8 minutes:
#   1. build_served.py: the sentiment and embed gpu_torch repositories (no floors);
#   2. pa_bench.py: embed FIRST, then sentiment (gpu-bench measures sentiment first after the
#      server starts), at CONCURRENCY (default 1,256,512), perf_analyzer over gRPC and over HTTP side
#      by side at each, with the server's busiest threads (perf_analyzer.Sampler: a thread near one
#      core busy is a serial stage; Triton 2.51's gRPC frontend runs inference RPCs on 2 threads);
#   3. pa_bench.py on a server with --grpc-infer-allocation-pool-size=$ALLOC_POOL (default 1024;
#      Triton's default 8 re-allocates a request/response object per RPC beyond 8 in flight):
#      sentiment at 512 clients, gRPC;
#   4. bench.floor_outputs on the same repository: do-nothing floors answering all of sentiment's
#      outputs, one output each, and embed's one (1 and 512 clients, 2 rounds, order alternating).
# Prepare: `make gpu-pack`; device tool, carry .device:  [CONCURRENCY=...] [ALLOC_POOL=1024] bash bench/gpu/run_peak_probe.sh
set -uo pipefail
cd "$(dirname "$0")/../.."
WORK=${WORK:-/tmp/trtserve-gpu}
source bench/gpu/device_env.sh
setup_perf_analyzer
step build_served 100 "${IMG[@]}" bench/gpu/build_served.py --data "$DEV/data" --work "$WORK" \
    --out "$PARTS/build_served.json" --skip-cpu-trace --no-floors --deployments sentiment,embed || exit 1
step protocols 200 "$STUB_PY" bench/gpu/pa_bench.py --texts "$DEV/data/texts.txt" --repository "$WORK/repository" \
    --label protocols --deployments embed,sentiment --reference "$WORK/reference.json" \
    --concurrency "${CONCURRENCY:-1,256,512}" --protocols grpc,http \
    --out "$PARTS/peak_protocols.json" --log "$PARTS/triton_protocols.log"
step alloc_pool 80 "$STUB_PY" bench/gpu/pa_bench.py --texts "$DEV/data/texts.txt" --repository "$WORK/repository" \
    --label "alloc_pool_${ALLOC_POOL:-1024}" --deployments sentiment --no-check --concurrency 512 \
    --server-arg="--grpc-infer-allocation-pool-size=${ALLOC_POOL:-1024}" \
    --out "$PARTS/peak_alloc_pool.json" --log "$PARTS/triton_alloc_pool.log"
step floor_outputs 220 env PYTHONPATH="$ROOT/build:$ROOT/serve:$ROOT/contract:$ROOT" "$STUB_PY" -m bench.floor_outputs --repository "$WORK/repository" \
    --texts "$DEV/data/texts.txt" --concurrency 1,512 --rounds 2 --out "$PARTS/floor_outputs.json"
cp "$PARTS"/peak_*.json "$PARTS/floor_outputs.json" "$OUT/" 2>/dev/null
