# The `triton` service on a GPU host: the NGC Triton server plus what the gpu variant's
# Python-backend models import (tokenizer, postprocess). Serves /models/gpu (compose mounts
# model_repository/ read-only on /models) as the image's unprivileged user `triton-server`.
# Pins: deploy/requirements/triton-gpu.txt. It serves the `gpu` variant only: `gpu_torch` needs
# PyTorch with CUDA in this image (see deploy/README.md), `cpu` has its own image.
ARG TRITON_RELEASE=25.04
FROM nvcr.io/nvidia/tritonserver:${TRITON_RELEASE}-py3
# Ubuntu 24.04 marks the system Python as externally managed; this image is ours.
ENV PIP_BREAK_SYSTEM_PACKAGES=1 \
    PIP_NO_CACHE_DIR=1 \
    TOKENIZERS_PARALLELISM=false
COPY deploy/requirements/triton-gpu.txt /tmp/requirements.txt
RUN python3 -m pip install -r /tmp/requirements.txt && rm /tmp/requirements.txt
COPY deploy/healthcheck.py /opt/trtserve/healthcheck.py
USER triton-server
EXPOSE 8000 8001 8002
# Everything in /models/gpu is loaded at start and the load/unload API is refused
# (model-control-mode none); latency quantiles (p50/p90/p95/p99) for the dashboard; shared
# memory between Triton and each Python-backend stub, one region per model instance: 16 MiB
# holds the largest request of the specs (qa: 128 windows x 384 tokens x 3 int64 tensors plus
# token spans = 1.5 MiB) ten times over (compose: shm_size 3gb; Kubernetes: a 3 GiB memory
# emptyDir on /dev/shm). --rate-limit=execution_count: instance groups' priorities choose the
# instance (a one-model deployment keeps one preferred instance warm; triton_config.py).
CMD ["tritonserver", \
     "--model-repository=/models/gpu", \
     "--model-control-mode=none", \
     "--strict-readiness=true", \
     "--rate-limit=execution_count", \
     "--http-port=8000", "--grpc-port=8001", "--metrics-port=8002", \
     "--metrics-config=summary_latencies=true", \
     "--backend-config=python,shm-default-byte-size=16777216", \
     "--backend-config=python,shm-growth-byte-size=16777216"]
