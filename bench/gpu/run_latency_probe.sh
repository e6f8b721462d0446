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
#   4. the phase lines and the c=1 rows into $OUT/latency_probe.md.
# Prepare: `make gpu-pack`; device tool, carry .device:  bash bench/gpu/run_latency_probe.sh
set -uo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
OUT=${OUT:-$ROOT/.device/out}
DEV=${DEV:-$ROOT/.device}
WORK=${WORK:-/tmp/trtserve-gpu}
PARTS=$WORK/parts
IMAGE_PY=${IMAGE_PY:-$(command -v python3)}
INSTANCES=${INSTANCES:-8 1}
source bench/gpu/device_env.sh
setup_perf_analyzer
IMG=(env "PYTHONPATH=$IMAGE_PYTHONPATH" "$IMAGE_PY")
step build_served 100 "${IMG[@]}" bench/gpu/build_served.py --data "$DEV/data" --work "$WORK" \
    --out "$PARTS/build_served.json" --skip-cpu-trace || exit 1
step inprocess 80 "$STUB_PY" bench/gpu/inprocess_bench.py --repository "$WORK/repository" \
    --texts "$DEV/data/texts.txt" --out "$PARTS/inprocess.json"
export TRTSERVE_PHASE_TIMES=1
for n in $INSTANCES; do
    step "c1_x$n" 70 "$STUB_PY" bench/gpu/pa_bench.py --texts "$DEV/data/texts.txt" --repository "$WORK/repository" \
        --label "c1_x$n" --no-check --instances "$n" --deployments sentiment --concurrency 1 --measurement-ms 4000 \
        --out "$PARTS/c1_x$n.json" --log "$PARTS/triton_c1_x$n.log"
done
{
    echo "# served concurrency 1: where the time goes ($(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader))"
    for n in $INSTANCES; do
        echo; echo "## $n instance(s)"; echo '```'
        "$STUB_PY" -c 'import json, sys; r = json.load(open(sys.argv[1]))
for row in r["deployments"]["sentiment"]["sweep"]:
    print({k: row.get(k) for k in ("concurrency", "infer_per_s", "p50_ms", "p99_ms")}, row.get("stages"))' "$PARTS/c1_x$n.json"
        grep -h "phase times" "$PARTS/triton_c1_x$n.log" | sed 's/^.*\] //'
        echo '```'
    done
    echo; echo "## in-process (the same Pipeline, one text)"; echo '```'
    "$STUB_PY" -c 'import json, sys; r = json.load(open(sys.argv[1])); print(json.dumps(r.get("sentiment", r), indent=1)[:3000])' "$PARTS/inprocess.json"
    echo '```'
} > "$OUT/latency_probe.md" 2>&1
cat "$OUT/latency_probe.md"
