#!/usr/bin/env bash
# Issue 14 on the GPU machine: `qa` and `ner` served by the gpu_torch variant, in one call.
#
#   1. set up (device_env.sh): the Triton server tree, the stubs' venv, the image python;
#   2. build_served.py (image python) the qa and ner gpu_torch repositories through the project's
#      stages (MiniLM architecture with seeded random weights: the checkpoints do not fit a run),
#      twice: FP32 TorchScript (the exactness run) and the spec's precision;
#   3. qa_ner_gpu.py reference (image python): FP32 eager answers of the same weights behind the
#      project's window tokenizer and postprocess;
#   4. qa_ner_gpu.py check (stub python): the embedded Triton serves each repository; all QA pairs
#      and NER texts over gRPC (requests of 1 and of 8 items, 8 clients) vs the reference.
#
# Prepare on the CPU machine with `make engines` (qa, ner exports) and bench/gpu/pack_device.sh,
# then through the device tool:   bash bench/gpu/run_qa_ner_gpu.sh   (carry: .device)
# Results: $OUT/qa_ner_gpu.json, $OUT/run.log, $OUT/parts.tgz.
set -uo pipefail
cd "$(dirname "$0")/../.."
WORK=${WORK:-/tmp/trtserve-qa-ner}
DEVICE=${DEVICE:-cuda}
source bench/gpu/device_env.sh

for precision in fp32 default; do
    extra=()
    [ "$precision" = fp32 ] && extra=(--precision fp32)
    step "build_$precision" 150 "${IMG[@]}" bench/gpu/build_served.py --data "$DEV/data" --work "$WORK/$precision" \
        --deployments qa,ner --no-floors --skip-cpu-trace --device "$DEVICE" "${extra[@]}" \
        --out "$PARTS/build_$precision.json" || continue
done
step reference 120 "${IMG[@]}" bench/gpu/qa_ner_gpu.py reference --repository "$WORK/fp32/repository" \
    --config "$DEV/data/sentiment_config.json" --texts "$DEV/data/texts.txt" --device "$DEVICE" \
    --out "$PARTS/reference.json"
for precision in fp32 default; do
    step "check_$precision" 150 "$STUB_PY" bench/gpu/qa_ner_gpu.py check --repository "$WORK/$precision/repository" \
        --reference "$PARTS/reference.json" --label "gpu_torch $precision" \
        --out "$PARTS/check_$precision.json" --log "$PARTS/triton_$precision.log"
done
"$IMAGE_PY" - "$PARTS" "$OUT/qa_ner_gpu.json" <<'EOF'
import json, sys
from pathlib import Path
parts = Path(sys.argv[1])
summary = {p.stem: json.loads(p.read_text()) for p in sorted(parts.glob("*.json")) if p.stem != "reference"}
Path(sys.argv[2]).write_text(json.dumps(summary, indent=1))
for name, part in summary.items():
    if name.startswith("check_"):
        print(name, {k: v for k, v in part.items() if k.startswith(("qa_", "ner_", "good", "empty", "ready"))})
EOF
