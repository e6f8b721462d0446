#!/usr/bin/env bash
# Issue 13's engine levers (BERT-base fp16 >= 22k seq/s at sequence 128) in one device call:
# bench/gpu/engine_levers.py under the image's python (torch + transformers there; no Triton tree,
# no .device, nothing to carry). Results: $OUT/engine_levers.{json,md}, $OUT/run.log.
#
#     BUDGET_S=300 bash bench/gpu/run_engine_levers.sh     (device tool, timeout_s 400)
#
# BUDGET_S (default 300) bounds the whole script; the Python run gets what is left. If the
# process dies mid-step (a crash in a compiler or a kernel) it is started again with --resume:
# the step it died in is recorded as crashed, the rest continue. A step that fails and leaves the
# CUDA context unusable is recorded and the process exits (status 75) for the same resume.
# Extra arguments go to engine_levers.py (e.g. --levers all, --more-batches 512,1024).
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-$PWD/.device/out}
BUDGET_S=${BUDGET_S:-300}
PY=${IMAGE_PY:-$(command -v python3)}
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-/tmp/trtserve-levers-inductor}
START=$(date +%s)
log() { echo "[run_engine_levers $(date +%T) +$(( $(date +%s) - START ))s] $*" | tee -a "$OUT/run.log"; }
nvidia-smi --query-gpu=name,driver_version,memory.total,temperature.gpu,utilization.gpu,clocks.sm,clocks.max.sm \
    --format=csv 2>&1 | tee -a "$OUT/run.log"
JSON=$OUT/engine_levers.json
resume=()
for attempt in 1 2 3; do
    left=$(( BUDGET_S - ($(date +%s) - START) ))
    [ "$left" -gt 40 ] || { log "no time left for attempt $attempt"; break; }
    log "attempt $attempt: $left s left"
    timeout --kill-after=5 "$left" "$PY" bench/gpu/engine_levers.py --out "$JSON" --budget-s $(( left - 12 )) \
        "${resume[@]}" "$@" 2>&1 | grep --line-buffered -v -E "DeprecationWarning|warnings.warn|UserWarning" \
        | tee -a "$OUT/run.log"
    rc=${PIPESTATUS[0]}
    log "attempt $attempt: exit $rc"
    finished=$("$PY" -c 'import json, sys; print(json.load(open(sys.argv[1])).get("finished"))' "$JSON" 2>/dev/null)
    [ "$finished" = True ] && break
    resume=(--resume)
done
[ -f "$OUT/engine_levers.md" ] && { echo; cat "$OUT/engine_levers.md"; }
log "done in $(( $(date +%s) - START ))s"
