#!/usr/bin/env bash
# The benchmark matrix's GPU series (torch-cuda fp32/fp16/hybrid) on the GPU machine, with the
# image's python (torch + CUDA, transformers) and this repository's build package: issue 11's GPT-2
# 124M prompt step by default (random weights made on the device from the config: nothing to carry),
# issue 10's RoBERTa-base and DeBERTa-v3-base sizes when named.
#
#     bash bench/gpu/run_matrix_gpu.sh [MODELS]     (device tool; default gpt2; for roberta-base /
#                                                    deberta-v3-base carry .cache/archs/tokenizers and
#                                                    .cache/engines/embed/tokenizer.json)
# The points are appended to a copy of docs/results/bench_matrix.csv in $OUT (points already there
# are not measured again); copy it back over docs/results/bench_matrix.csv.
set -euo pipefail
cd "$(dirname "$0")/../.."
MODELS=${1:-gpt2}
OUT=${OUT:-$PWD/.device/out}
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
cp docs/results/bench_matrix.csv "$OUT/bench_matrix.csv"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/matrix_gpu.log"
PYTHONPATH=$PWD/build:$PWD/serve:$PWD/contract:$PWD timeout 540 python3 -m bench.bench_matrix --models "$MODELS" \
    --executors torch-cuda --out-dir "$OUT" --no-plots --budget-min "${BUDGET_MIN:-8}" 2>&1 | tee -a "$OUT/matrix_gpu.log"
