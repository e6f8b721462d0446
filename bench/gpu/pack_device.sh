#!/usr/bin/env bash
# Prepare, on the CPU machine, everything the one-call GPU benchmark needs beside the tracked
# tree, in .device/ (listed in .git/info/exclude; passed to the device tool as `carry`).
#
#   .device/triton-server.tar.xz   slimmed nvidia-pytriton 0.7.0 tree (Triton 2.51): the server
#                                  binary, its bundled libraries (no libpython3.13), the Python
#                                  backend and the Python 3.12 stub only; an empty
#                                  pytriton/__init__.py so trtserve_server.embedded finds it
#   .device/wheels/                numpy 1.26.4 (the 2.51 stub needs numpy < 2), the gRPC
#                                  client: tritonclient, python-rapidjson, protobuf (grpcio: the image's); and
#                                  perf-analyzer 2.60.0 (its binary needs glibc >= 2.38: fine there)
#   .device/data/                  sentiment and embed export manifests + tokenizer.json, the MiniLM
#                                  config.json (weights are made on the GPU machine), texts;
#                                  the checkpoint minus its weights and the review snippets
#                                  (run_cpu_bench.sh)
#
# Usage: bench/gpu/pack_device.sh   (needs the sentiment and embed exports: `make engines`)
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
DEV=$ROOT/.device
EXCLUDE=$(git rev-parse --git-path info/exclude)   # a worktree's .git is a file
grep -qx '/.device/' "$EXCLUDE" 2>/dev/null || { mkdir -p "$(dirname "$EXCLUDE")"; echo '/.device/' >> "$EXCLUDE"; }
DL=${TMPDIR:-/tmp}/trtserve-device-downloads
mkdir -p "$DL" "$DEV/wheels" "$DEV/data"

PLATFORMS=(--platform manylinux_2_35_x86_64 --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64
           --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
for spec in nvidia-pytriton==0.7.0 numpy==1.26.4 tritonclient==2.73.0 python-rapidjson==1.25 \
            protobuf==6.33.6 grpcio==1.85.1; do
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        "${PLATFORMS[@]}" -d "$DL" "$spec"
done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_38_x86_64 -d "$DL" perf-analyzer==2.60.0

# --- the slimmed server tree ----------------------------------------------------------------
if [ ! -f "$DEV/triton-server.tar.xz" ]; then
    tmp=$(mktemp -d)
    python3 -m zipfile -e "$DL"/nvidia_pytriton-0.7.0-*.whl "$tmp/x"
    mkdir -p "$tmp/t/pytriton/tritonserver/python_backend_stubs"
    cp -a "$tmp/x/pytriton/tritonserver/bin" "$tmp/x/pytriton/tritonserver/backends" "$tmp/t/pytriton/tritonserver/"
    cp -a "$tmp/x/pytriton/tritonserver/python_backend_stubs/3.12" "$tmp/t/pytriton/tritonserver/python_backend_stubs/"
    cp -a "$tmp/x/nvidia_pytriton.libs" "$tmp/t/"
    rm -f "$tmp"/t/nvidia_pytriton.libs/libpython3-*.13.so.1.0 "$tmp"/t/pytriton/tritonserver/backends/python/triton_python_backend_stub
    : > "$tmp/t/pytriton/__init__.py"   # TritonInstall.locate() only needs pytriton.__file__
    chmod +x "$tmp/t/pytriton/tritonserver/bin/tritonserver" \
             "$tmp/t/pytriton/tritonserver/python_backend_stubs/3.12/triton_python_backend_stub"
    tar -C "$tmp/t" -cJf "$DEV/triton-server.tar.xz" .
    rm -rf "$tmp"
fi
cp "$DL"/numpy-1.26.4-*.whl "$DL"/tritonclient-2.73.0-*.whl "$DL"/python_rapidjson-1.25-*.whl \
   "$DL"/protobuf-6.33.6-*.whl "$DL"/perf_analyzer-2.60.0-*.whl "$DEV/wheels/"
# grpcio (7 MB) stays behind: the image has it (tritonclient.grpc imports there through the .pth),
# and perf-analyzer (7 MB) must fit in the 64 MiB beside the server tree and numpy.
rm -f "$DEV"/wheels/grpcio-*.whl

# --- data: what the served sentiment repository is generated from -----------------------------
CHECKPOINT=${TRTSERVE_CACHE:-$ROOT/.cache}/checkpoints/sentiment
for name in sentiment embed qa ner; do
    EXPORT=${TRTSERVE_CACHE:-$ROOT/.cache}/engines/$name
    mkdir -p "$DEV/data/engines/$name"
    cp "$EXPORT/export.json" "$EXPORT/tokenizer.json" "$DEV/data/engines/$name/"
done
cp "$CHECKPOINT/config.json" "$DEV/data/sentiment_config.json"
# run_cpu_bench.sh: the checkpoint without its weights (random_checkpoint.py fills them in) and
# the review snippets the build checks the export on
mkdir -p "$DEV/data/checkpoint"
cp "$CHECKPOINT"/{config.json,tokenizer.json,tokenizer_config.json,trtserve_training.json} "$DEV/data/checkpoint/"
cp "${TRTSERVE_CACHE:-$ROOT/.cache}/data/movieReviewSnippets_GroundTruth.txt" "$DEV/data/"
"${PY:-.venv/bin/python}" - "$DEV/data/texts.txt" <<'EOF'
import sys
from trtserve_build.data.datasets import corpus_texts
texts = [t.replace("\n", " ") for t in corpus_texts()[-2000:]]
open(sys.argv[1], "w").write("\n".join(texts) + "\n")
print(f"{len(texts)} texts")
EOF
du -sh "$DEV"/* "$DEV"
