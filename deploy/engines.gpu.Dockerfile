# The `engines` service on a GPU host: `make engines VARIANT=gpu PY=python3` with the full
# TensorRT of the same NGC release as the server (a plan only loads in the TensorRT version that
# built it). Pins: deploy/requirements/engines.txt (checked against pyproject.toml by
# tests/unit/test_images.py); TensorRT and its Python bindings come with the image.
ARG TRITON_RELEASE=25.04
FROM nvcr.io/nvidia/tensorrt:${TRITON_RELEASE}-py3
# Ubuntu 24.04 marks the system Python as externally managed; this image is ours.
ENV PIP_BREAK_SYSTEM_PACKAGES=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONPATH=/workspace/trtserve/build:/workspace/trtserve/serve:/workspace/trtserve/client:/workspace/trtserve/contract:/workspace/trtserve \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    TOKENIZERS_PARALLELISM=false \
    HOME=/tmp
RUN apt-get update && apt-get install -y --no-install-recommends make && rm -rf /var/lib/apt/lists/*
COPY deploy/requirements/engines.txt /tmp/requirements.txt
# torch==2.13.0+cpu: the CPU build, an exact pin (its local label only exists on PyTorch's CPU
# index, so nothing else can satisfy it). PyPI's torch==2.13.0 is the CUDA 13 build, which needs
# driver R580+ and several GB, while this image is CUDA 12.9 (R575+): there torch would see no
# GPU. Export and training need none; the plan is built by TensorRT.
RUN python3 -m pip install --extra-index-url https://download.pytorch.org/whl/cpu -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt
# The project's build code, so that the image also runs on its own (the Kubernetes Job,
# deploy/k8s/engines-job.yaml); docker compose mounts the checkout over it.
COPY Makefile pyproject.toml /workspace/trtserve/
COPY deployments/ /workspace/trtserve/deployments/
COPY build/trtserve_build/ /workspace/trtserve/build/trtserve_build/
COPY serve/trtserve_backend/ /workspace/trtserve/serve/trtserve_backend/
COPY client/trtserve_client/ /workspace/trtserve/client/trtserve_client/
COPY contract/trtserve_contract/ /workspace/trtserve/contract/trtserve_contract/
# the build's real-text fidelity items (QA pairs, NER texts) come from loadtest's workload module
COPY loadtest/ /workspace/trtserve/loadtest/
WORKDIR /workspace/trtserve
CMD ["make", "engines", "VARIANT=gpu", "PY=python3", "GENERATE=0"]
