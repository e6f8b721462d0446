# The `engines` service of the cpu stack (docker compose --env-file deploy/cpu.env ...): runs
# `make engines VARIANT=cpu PY=python3` on the mounted checkout: trains the sentiment head when
# .cache/ has no checkpoint, exports and checks ONNX, writes model_repository/cpu/.
# BASE_IMAGE: a Debian-based Python 3.11 image; the public one by default, or the one
# deploy/offline/base-image.sh makes from Debian packages where no registry is reachable.
# Pins: deploy/requirements/engines.txt (checked against pyproject.toml by tests/unit/test_images.py).
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}
RUN apt-get update && apt-get install -y --no-install-recommends make && rm -rf /var/lib/apt/lists/*
# PyPI's torch 2.13.0 is the CUDA build: the +cpu pin comes from PyTorch's CPU index.
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
# WHEELS_URL: the host's wheelhouse of exactly these pins (deploy/offline/wheelhouse.sh, served
# over HTTP: it never enters the context or a layer); nothing is downloaded then. Else PyPI.
ARG WHEELS_URL=
COPY deploy/requirements/engines.txt /tmp/requirements.txt
RUN if [ -n "$WHEELS_URL" ]; then h="${WHEELS_URL#*://}"; src="--no-index --find-links $WHEELS_URL --trusted-host ${h%%/*}"; \
    else src="--extra-index-url $TORCH_INDEX"; fi \
    && python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check $src -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/workspace/trtserve/build:/workspace/trtserve/serve:/workspace/trtserve/client:/workspace/trtserve/contract:/workspace/trtserve \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    TOKENIZERS_PARALLELISM=false \
    PIP_NO_CACHE_DIR=1 \
    HOME=/tmp
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
CMD ["make", "engines", "VARIANT=cpu", "PY=python3", "GENERATE=0"]
