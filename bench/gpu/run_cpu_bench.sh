#!/usr/bin/env bash
# `make bench` (bench/bench_serving.py) on the GPU machine's host CPUs: the served CPU ensemble
# against HF pipeline and raw ONNX Runtime, side by side in one run, on a 16-core server host
# instead of the 2-vCPU development VM. The GPU is not used.
#
#   1. environment (bench/gpu/device_env.sh): Triton 2.51 server tree, stub venv, client;
#   2. random_checkpoint.py: the sentiment checkpoint with random weights (the trained 90 MB
#      checkpoint does not fit the 64 MiB transfer; timings depend on the architecture and the
#      token counts, not on weight values); real tokenizer, config and training stamp;
#   3. `python -m trtserve_build.cli engines deployments/sentiment.toml --variant cpu`: export,
#      ONNX Runtime vs PyTorch check, the CPU model repository (the same stages as `make engines`);
#   4. python -m bench.bench_serving, as `make bench` runs it, with perf_analyzer (the wheel's
#      binary runs natively there) as the outside client.
#
# Prepare with bench/gpu/pack_device.sh, then through the device tool (carry: .device):
#     bash bench/gpu/run_cpu_bench.sh
# Results: $OUT/bench_serving.json, $OUT/run.log, $OUT/parts.tgz (Triton log, build output).
# AB=1 adds step 5 (the default one-model topology against the three-step ensemble, side by
# side); ORT_AB=1 adds step 6 (ONNX Runtime threading of the one model: split cores, every key
# "auto", one instance; bench/ort_threads_ab.py, ORT_VARIANTS to choose others); MAIN_BENCH=0
# skips step 4. The threading A/B alone, about 3 minutes; the hot instance on every core,
# spinning or sleeping, against split (not yet measured on 16 cores):
#     MAIN_BENCH=0 ORT_AB=1 bash bench/gpu/run_cpu_bench.sh
#     MAIN_BENCH=0 ORT_AB=1 ORT_VARIANTS=split:2:8:true:8:true,hot:2:8:true:16:true,hotsleep:2:8:true:16:false,one:1:16:true \
#         bash bench/gpu/run_cpu_bench.sh
set -uo pipefail
cd "$(dirname "$0")/../.."
WORK=${WORK:-/tmp/trtserve-cpu}
REQUESTS=${REQUESTS:-1000}
BENCH_SECONDS=${BENCH_SECONDS:-40}
source bench/gpu/device_env.sh
setup_perf_analyzer
log "cpu: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)"

# The spec's checkpoint folder is .cache/checkpoints/sentiment under the repository (not carried).
CACHE=$ROOT/.cache
mkdir -p "$CACHE/data" && cp "$DEV/data/movieReviewSnippets_GroundTruth.txt" "$CACHE/data/"
PACKAGES=$ROOT:$ROOT/build:$ROOT/serve:$ROOT/client:$ROOT/contract   # $ROOT: the bench package
IMG=(env "PYTHONPATH=$PACKAGES:$IMAGE_PYTHONPATH" "$IMAGE_PY")
# The benchmark process (client, HF pipeline, raw ONNX Runtime) runs on the image's python, whose
# transformers needs its numpy 2; the server's Python-backend stubs run in the stub venv
# (numpy 1.26 for the 2.51 stub), which TRTSERVE_STUB_PYTHON names.
BENCH=(env "PYTHONPATH=$PACKAGES:$IMAGE_PYTHONPATH:$WORK/triton" "TRTSERVE_STUB_PYTHON=$STUB_PY" "$IMAGE_PY")

step checkpoint 120 "${IMG[@]}" bench/gpu/random_checkpoint.py --data "$DEV/data/checkpoint" \
    --out "$CACHE/checkpoints/sentiment" || exit 1
step engines 240 "${IMG[@]}" -m trtserve_build.cli engines deployments/sentiment.toml --variant cpu || exit 1
[ "${MAIN_BENCH:-1}" = 1 ] && step bench 420 "${BENCH[@]}" -m bench.bench_serving --requests "$REQUESTS" --seconds "$BENCH_SECONDS" \
    --output "$OUT/bench_serving.json"
cp results/bench_triton.log "$PARTS/" 2>/dev/null

# 5. (AB=1) the deployment as one Python model (the default) against the three-step ensemble of
#    the same engine, side by side (bench/ab_repositories.py).
if [ "${AB:-0}" = 1 ]; then
    sed -e '/^\[engine.cpu\]/a topology = "ensemble"\ntokenizer_instances = "auto"\npostprocess_instances = "auto"' deployments/sentiment.toml > "$WORK/sentiment_ensemble.toml"
    step engines_ensemble 120 "${IMG[@]}" -m trtserve_build.cli engines "$WORK/sentiment_ensemble.toml" --variant cpu \
        --output "$ROOT/model_repository/cpu_ensemble"
    step ab_topology 300 "${BENCH[@]}" -m bench.ab_repositories model_repository/cpu model_repository/cpu_ensemble \
        --rounds 5 --throughput-seconds 6
fi

# 6. (ORT_AB=1) ONNX Runtime threads of the one model, side by side, read by perf_analyzer, with
#    the floor, Pipeline.run in-process and raw ONNX Runtime in the same rounds.
if [ "${ORT_AB:-0}" = 1 ]; then
    step ort_threads_ab 300 "${BENCH[@]}" -m bench.ort_threads_ab --rounds "${AB_ROUNDS:-3}" \
        ${ORT_VARIANTS:+--variants "$ORT_VARIANTS"} --output "$OUT/ort_threads_ab.json"
fi
