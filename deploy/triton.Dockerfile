# Triton for trtserve: the NGC server image plus what the generated Python-backend models
# import (tokenizer, postprocess; the cpu variant's ONNX Runtime encoder). Pins as in
# pyproject.toml; tests/unit/test_compose.py checks they agree.
ARG TRITON_RELEASE=25.04
FROM nvcr.io/nvidia/tritonserver:${TRITON_RELEASE}-py3
# Ubuntu 24.04 marks the system Python as externally managed; this image is ours.
ENV PIP_BREAK_SYSTEM_PACKAGES=1 \
    PIP_NO_CACHE_DIR=1 \
    TOKENIZERS_PARALLELISM=false
RUN python3 -m pip install "numpy==1.26.4" "tokenizers==0.23.3" "onnxruntime==1.31.1"
