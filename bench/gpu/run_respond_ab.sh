#!/usr/bin/env bash
# A/B of the one model's Python code (the repository's copy of trtserve_backend) on the same
# repository, the same server settings and the same machine: "old" = $OLD_BACKEND (a folder
# holding serve/trtserve_backend of another commit, e.g. made here with
# `git archive <commit> serve/trtserve_backend | tar -x -C .device/old_backend`), "new" = this
# tree's. Sentiment, perf_analyzer at 1 and 512 clients, interleaved, two rounds, fresh servers.
# Session 8's run (the reused LABEL tensors and the cheaper read phase, commit 082fd8d, against
# fe91a79) lost its old arm: the script then swapped the package but not model.py, whose new
# import the old package lacks; it now swaps both. Not rerun (no device time left).
# Results: $OUT/respond_ab.md, parts.tgz. Carry .device (data, wheels, archive) and $OLD_BACKEND.
set -uo pipefail
cd "$(dirname "$0")/../.."
WORK=${WORK:-/tmp/trtserve-gpu}
OLD_BACKEND=${OLD_BACKEND:-.device/old_backend}
source bench/gpu/device_env.sh
setup_perf_analyzer
build_served_sentiment || exit 1
cp -r "$WORK/repository" "$WORK/repository_old"
for version in "$WORK"/repository_old/*/1; do
    [ -d "$version/trtserve_backend" ] || continue
    # model.py is a copy of one of triton_models/*.py: take the old commit's twin of it too
    for twin in "$version"/trtserve_backend/triton_models/*.py; do
        cmp -s "$twin" "$version/model.py" && cp "$OLD_BACKEND/serve/trtserve_backend/triton_models/$(basename "$twin")" "$version/model.py"
    done
    rm -rf "$version/trtserve_backend" && cp -r "$OLD_BACKEND/serve/trtserve_backend" "$version/trtserve_backend"
done
PA=("$STUB_PY" bench/gpu/pa_bench.py --texts "$DEV/data/texts.txt" --no-check --deployments sentiment
    --concurrency 1,512 --measurement-ms 3000)
summary() {
    echo "# Python-code A/B, sentiment gpu_torch ($(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader))"
    ab_rows old new
}
for round in 1 2; do
    for arm in old new; do
        repo="$WORK/repository"; [ "$arm" = old ] && repo="$WORK/repository_old"
        step "${arm}_$round" 60 "${PA[@]}" --repository "$repo" --label "${arm}_$round" \
            --out "$PARTS/${arm}_$round.json" --log "$PARTS/triton_${arm}_$round.log"
        summary > "$OUT/respond_ab.md" 2>&1
    done
done
cat "$OUT/respond_ab.md"
