# Shared by the scripts that run on the GPU machine (sourced by bash): logging, steps, results
# packing, and the Python environments there. Sourced from the repository root after the
# script sets WORK (its scratch folder); ROOT, OUT, DEV, IMAGE_PY have defaults here, PARTS is
# $WORK/parts, and $IMG runs the image's python with IMAGE_PYTHONPATH.
#
#   * the slimmed Triton 2.51 server tree from $DEV/triton-server.tar.xz (bench/gpu/pack_device.sh);
#   * $STUB_PY: a venv for the Python-backend stubs (numpy 1.26 + a .pth to the image's torch,
#     tokenizers, onnxruntime) that also holds the gRPC client;
#   * $IMAGE_PYTHONPATH: tritonclient for the image's python (the build stages).
ROOT=$PWD   # the scripts cd to the repository root first
OUT=${OUT:-$ROOT/.device/out}
DEV=${DEV:-$ROOT/.device}
: "${WORK:?the script sets WORK (its scratch folder) before sourcing device_env.sh}"
PARTS=$WORK/parts
IMAGE_PY=${IMAGE_PY:-$(command -v python3)}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
export PYTHONDONTWRITEBYTECODE=1
mkdir -p "$OUT"
rm -rf "$WORK" && mkdir -p "$PARTS"
START=$(date +%s)
STATUS=()

log() { echo "[$(basename "$0" .sh) $(date +%T) +$(( $(date +%s) - START ))s] $*" | tee -a "$OUT/run.log"; }
elapsed() { echo $(( $(date +%s) - START )); }
# step NAME TIMEOUT CMD...: run, log, remember the outcome; a failed step does not stop the others.
step() {
    local name=$1 limit=$2; shift 2
    log "step $name (timeout ${limit}s): $*"
    timeout --kill-after=10 "$limit" "$@" 2>&1 | grep --line-buffered -v -E "DeprecationWarning|warnings.warn|TracerWarning" | tee -a "$OUT/run.log"
    local rc=${PIPESTATUS[0]}
    STATUS+=("$name=$rc")
    log "step $name: exit $rc"
    return "$rc"
}
pack() {
    cp "$OUT/run.log" "$PARTS/" 2>/dev/null
    tar -C "$PARTS" -czf "$OUT/parts.tgz" . 2>/dev/null
    log "done in $(elapsed)s: ${STATUS[*]}"
}
trap pack EXIT

log "repo $ROOT"
nvidia-smi --query-gpu=name,driver_version,memory.total,temperature.gpu,utilization.gpu,clocks.sm,clocks.max.sm --format=csv 2>&1 | tee -a "$OUT/run.log"
[ -f "$DEV/triton-server.tar.xz" ] || { log "missing $DEV/triton-server.tar.xz: run bench/gpu/pack_device.sh and carry .device"; exit 2; }
mkdir -p "$WORK/triton" && tar -C "$WORK/triton" -xJf "$DEV/triton-server.tar.xz"
BASE_PY=$("$IMAGE_PY" -c 'import sys; print(getattr(sys, "_base_executable", sys.executable))')
"$BASE_PY" -m venv --without-pip "$WORK/stubenv"
STUB_PY=$WORK/stubenv/bin/python3
STUB_SITE=$("$STUB_PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
"$IMAGE_PY" -m pip install -q --no-index --no-deps --no-compile --target "$STUB_SITE" "$DEV"/wheels/*.whl
IMAGE_SITE=$("$IMAGE_PY" -c 'import os, torch; print(os.path.dirname(os.path.dirname(torch.__file__)))')
# .pth files are read in name order, after the venv's own site-packages: numpy 1.26 and the
# client wheels above win over the image's numpy 2; torch, tokenizers come from the image.
echo "$IMAGE_SITE" > "$STUB_SITE/zz_image_site.pth"
echo "$WORK/triton" > "$STUB_SITE/trtserve_triton_tree.pth"   # pytriton/ (server tree) for TritonInstall
mkdir -p "$WORK/imagesite"
"$IMAGE_PY" -m pip install -q --no-index --no-deps --no-compile --target "$WORK/imagesite" \
    "$DEV"/wheels/tritonclient-*.whl "$DEV"/wheels/python_rapidjson-*.whl
if ! PYTHONPATH=$WORK/imagesite "$IMAGE_PY" -c 'import tritonclient.grpc.model_config_pb2' 2>/dev/null; then
    log "image protobuf too old for tritonclient's model_config_pb2: adding protobuf 6.33.6 for the image python"
    "$IMAGE_PY" -m pip install -q --no-index --no-deps --no-compile --target "$WORK/imagesite" "$DEV"/wheels/protobuf-*.whl
fi
export IMAGE_PYTHONPATH=$WORK/imagesite
IMG=(env "PYTHONPATH=$IMAGE_PYTHONPATH" "$IMAGE_PY")   # an array, not a function: `timeout` runs it
log "stub python: $("$STUB_PY" -c 'import sys, numpy, torch, tokenizers, grpc, tritonclient.grpc; print(sys.version.split()[0], "numpy", numpy.__version__, "torch", torch.__version__, "cuda", torch.cuda.is_available(), "tokenizers", tokenizers.__version__, "grpc", grpc.__version__)' 2>&1 | tail -1)"
log "image python: $(PYTHONPATH=$IMAGE_PYTHONPATH "$IMAGE_PY" -c 'import sys, numpy, torch, transformers, google.protobuf as pb; print(sys.version.split()[0], "numpy", numpy.__version__, "torch", torch.__version__, "transformers", transformers.__version__, "protobuf", pb.__version__)' 2>&1 | tail -1)"


# perf_analyzer from its wheel: the binary runs natively on the GPU machine (glibc >= 2.38)
setup_perf_analyzer() {
    "$IMAGE_PY" -m pip install -q --no-index --no-deps --no-compile --target "$WORK/pa" "$DEV"/wheels/perf_analyzer-*.whl
    chmod +x "$WORK/pa/perf_analyzer/bin/perf_analyzer"
    export PERF_ANALYZER=$WORK/pa/perf_analyzer/bin/perf_analyzer
    log "perf_analyzer: $("$PERF_ANALYZER" --version 2>&1 | head -1)"
}

# build_served_sentiment: the `sentiment` gpu_torch repository alone (no floors) in $WORK/repository,
# as `make gpu-bench` builds it: the served model of the A/B scripts (run_hot_ab, run_sync_ab, run_idle_ab).
build_served_sentiment() {
    step build_served 100 "${IMG[@]}" bench/gpu/build_served.py --data "$DEV/data" --work "$WORK" \
        --out "$PARTS/build_served.json" --skip-cpu-trace --no-floors --deployments sentiment
}

# ab_rows ARM...: the table of an interleaved A/B script (run_hot_ab, run_sync_ab, run_respond_ab):
# one line per perf_analyzer sweep row of each $PARTS/<arm>_<round>.json (pa_bench.py --out), for
# the first deployment in it.
ab_rows() {
    local arm f
    echo "arm concurrency infer_per_s p50_ms p99_ms server_cores gpu_util_pct"
    for arm in "$@"; do
        for f in "$PARTS/$arm"_[0-9]*.json; do
            [ -f "$f" ] || continue
            "$STUB_PY" -c 'import json, sys; r = json.load(open(sys.argv[1]))
for row in next(iter(r["deployments"].values()))["sweep"]:
    load = row.get("load", {})
    print(sys.argv[1].rsplit("/", 1)[-1][:-5], row["concurrency"], row.get("infer_per_s"), row.get("p50_ms"),
          row.get("p99_ms"), load.get("cores_busy"), load.get("gpu_util_mean_pct"))' "$f"
        done
    done
}
