# trtserve: the front door. `make serve` and `make test` work on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
HTTP_PORT ?= 8000
GRPC_PORT ?= 8001
METRICS_PORT ?= 8002
TRITON_LOG ?= .cache/triton-serve.log
VARIANT ?= cpu
DEPLOYMENTS ?= deployments/sentiment.toml deployments/embed.toml
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: venv serve test unit engines repository bench clean help

help:
	@echo "make serve   - build (cached) and serve the default models on 127.0.0.1:$(HTTP_PORT)/$(GRPC_PORT)"
	@echo "make test    - install and run the whole test suite"
	@echo "make engines - export ONNX, check it, build TensorRT plans and model repositories"
	@echo "make bench   - served vs in-process benchmark for sentiment"

venv: $(STAMP)
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	@touch $(STAMP)

engines: $(STAMP)
	$(PY) -m trtserve_build.cli engines $(DEPLOYMENTS) --variant $(VARIANT) $(if $(PRECISION),--precision $(PRECISION)) $(if $(FORCE),--force)

serve: $(STAMP)
	$(PY) -m trtserve_build.cli engines $(DEPLOYMENTS) --variant cpu
	exec $(PY) -m trtserve_server.cli serve --model-repository model_repository/cpu \
		--http-port $(HTTP_PORT) --grpc-port $(GRPC_PORT) --metrics-port $(METRICS_PORT) \
		--log-file $(TRITON_LOG)

# The default models are trained/exported first (cached, with progress shown), so test
# timeouts measure tests, not the one-off training.
test: $(STAMP)
	$(PY) -m trtserve_build.cli engines $(DEPLOYMENTS) --variant cpu
	$(PY) -m pytest -x -v --timeout=900 tests

unit: $(STAMP)
	$(PY) -m pytest -v tests/unit

bench: $(STAMP)
	$(PY) -m trtserve_build.cli engines $(DEPLOYMENTS) --variant cpu
	$(PY) bench/bench_serving.py

clean:
	rm -rf model_repository/cpu model_repository/gpu .cache/engines
