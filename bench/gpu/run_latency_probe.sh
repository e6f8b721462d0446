#!/usr/bin/env bash
# Where the served concurrency-1 time goes (issue 13: served c=1 p50 <= in-process + 0.8 ms), in
# one device call of about 4 minutes:
#   1. build_served.py: the `sentiment` gpu_torch repository (one Python model; MiniLM, random
#      weights), as `make gpu-bench` builds it;
#   2. inprocess_bench.py: the same Pipeline in-process (one text: tokenize, engine, postprocess);
#   3. pa_bench.py at concurrency 1 with TRTSERVE_PHASE_TIMES=1, with "auto" instances (8 on 16
#      cores) and with one: perf_analyzer's p50 beside Triton's queue/execution statistics, and
#      each stub's own seconds per phase (read, tokenize, engine, postprocess, respond; logged by
#      the model at shutdown into the Triton log);
#   4. PEAK=1: sentiment and embed at 256 and 512 clients with "auto" (8) instances (PEAK_INSTANCES,
#      PEAK_DEPLOYMENTS choose others);
#      MPS_AB=1: the same with CUDA MPS (one GPU context shared by the stubs: no time-slicing
#      between 8 contexts), started as a user-space daemon (nvidia-cuda-mps-control, if the
#      machine has it; GPU settings untouched) and quit at the end; plus c=256,512 with and without;
#   5. the phase lines and the rows into $OUT/latency_probe.md.
# Prepare: `make gpu-pack`; device tool, carry .device:
#   [MPS_AB=1] [ENGINE_FORMAT=torchscript|fused] [IDLE_POLL_MS=20] bash bench/gpu/run_latency_probe.sh
set -uo pipefail
cd "$(dirname "$0")/../.."
WORK=${WORK:-/tmp/trtserve-gpu}
INSTANCES=${INSTANCES:-8 1}
source bench/gpu/device_env.sh
setup_perf_analyzer
step build_served 100 "${IMG[@]}" bench/gpu/build_served.py --data "$DEV/data" --work "$WORK" \
    --out "$PARTS/build_served.json" --skip-cpu-trace ${ENGINE_FORMAT:+--engine-format "$ENGINE_FORMAT"} \
    ${IDLE_POLL_MS:+--idle-poll-ms "$IDLE_POLL_MS"} || exit 1
step inprocess 80 "$STUB_PY" bench/gpu/inprocess_bench.py --repository "$WORK/repository" \
    --texts "$DEV/data/texts.txt" --out "$PARTS/inprocess.json"
export TRTSERVE_PHASE_TIMES=1
PA=("$STUB_PY" bench/gpu/pa_bench.py --texts "$DEV/data/texts.txt" --repository "$WORK/repository" --no-check
    --measurement-ms 4000)
LABELS=()
probe() {  # probe LABEL INSTANCES CONCURRENCY [DEPLOYMENTS]
    LABELS+=("$1")
    step "$1" 90 "${PA[@]}" --label "$1" --instances "$2" --concurrency "$3" --deployments "${4:-sentiment}" \
        --out "$PARTS/$1.json" --log "$PARTS/triton_$1.log"
}
for n in $INSTANCES; do probe "c1_x$n" "$n" 1; done
# PEAK=1: the peak (256 and 512 clients) of PEAK_DEPLOYMENTS (default both) with each of
# PEAK_INSTANCES instances (default 8: "auto" on 16 cores, as `make gpu-bench` measures it)
if [ "${PEAK:-0}" = 1 ]; then
    for n in ${PEAK_INSTANCES:-8}; do probe "peak_x$n" "$n" 256,512 "${PEAK_DEPLOYMENTS:-sentiment,embed}"; done
fi
if [ "${MPS_AB:-0}" = 1 ] && command -v nvidia-cuda-mps-control >/dev/null; then
    probe peak_x8 8 256,512
    export CUDA_MPS_PIPE_DIRECTORY=$WORK/mps/pipe CUDA_MPS_LOG_DIRECTORY=$WORK/mps/log
    mkdir -p "$CUDA_MPS_PIPE_DIRECTORY" "$CUDA_MPS_LOG_DIRECTORY"
    nvidia-cuda-mps-control -d && log "MPS daemon started"
    trap 'echo quit | nvidia-cuda-mps-control; pack' EXIT
    for n in $INSTANCES; do probe "mps_c1_x$n" "$n" 1; done
    probe mps_peak_x8 8 256,512
    echo quit | nvidia-cuda-mps-control && log "MPS daemon stopped"
    trap pack EXIT
elif [ "${MPS_AB:-0}" = 1 ]; then
    log "no nvidia-cuda-mps-control on this machine: MPS A/B skipped"
fi
{
    echo "# served concurrency 1: where the time goes ($(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader))"
    for label in "${LABELS[@]}"; do
        echo; echo "## $label"; echo '```'
        "$STUB_PY" -c 'import json, sys; r = json.load(open(sys.argv[1]))
for name, d in r["deployments"].items():
    for row in d["sweep"]:
        print(name, {k: row.get(k) for k in ("concurrency", "infer_per_s", "p50_ms", "p99_ms")}, row.get("stages"),
              {k: row.get("load", {}).get(k) for k in ("cores_busy", "gpu_util_mean_pct")})' "$PARTS/$label.json"
        grep -h "phase times" "$PARTS/triton_$label.log" | sed 's/^.*\] //'
        echo '```'
    done
    echo; echo "## in-process (the same Pipeline, one text)"; echo '```'
    "$STUB_PY" -c 'import json, sys; r = json.load(open(sys.argv[1]))["deployments"]["sentiment"]
print(json.dumps({k: r.get(k) for k in ("pipeline_one_text", "pipeline_stages_p50_ms", "pipeline_one_text_after_gap")}, indent=1))' "$PARTS/inprocess.json"
    echo '```'
} > "$OUT/latency_probe.md" 2>&1
cat "$OUT/latency_probe.md"
