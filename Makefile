# crossdistill — all set-up happens here; a fresh clone needs only python3 (3.10-3.12).
PYTHON ?= python3
VENV   ?= .venv
# MLServer (the stock OIP server of tests/test_mlserver.py) lives in a venv of its own: it pins an older
# fastapi than KServe serves with.
MLSERVER_VENV ?= .venv-mlserver
MLSERVER_SPEC ?= mlserver==1.7.1
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# The CPU build of torch; on a GPU node install the CUDA build of the same version instead.
TORCH_SPEC ?= torch==2.13.0
RUN_DIR ?= runs/demo
LM_RUN_DIR ?= runs/lm-demo
PYTEST_ARGS ?=

.PHONY: help venv venv-mlserver run run-lm test test-fast lint format compile upload images validate bench bench-quality bench-scale bench-latency bench-replicas bench-data-parallel bench-token-bytes bench-serving-cost clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	# torch first, pinned, so no version range below can pull a multi-GB CUDA build.
	$(PIP) install --quiet "$(TORCH_SPEC)"
	$(PIP) install --quiet -e ".[dev]"
	touch $@

venv: $(VENV)/.installed $(MLSERVER_VENV)/.installed  ## create .venv with everything installed (+ .venv-mlserver)

$(MLSERVER_VENV)/.installed:
	$(PYTHON) -m venv $(MLSERVER_VENV)
	$(MLSERVER_VENV)/bin/python -m pip install --quiet "$(MLSERVER_SPEC)"
	touch $@

venv-mlserver: $(MLSERVER_VENV)/.installed  ## MLServer in .venv-mlserver (tests/test_mlserver.py skips without it)

run: venv  ## the main job: distil a Keras teacher into a PyTorch student over gRPC on digits
	$(VENV)/bin/crossdistill demo --out $(RUN_DIR)

run-lm: venv  ## language models: a Keras transformer teaches a PyTorch one token by token (Python's own source as text)
	$(VENV)/bin/crossdistill lm-demo --out $(LM_RUN_DIR)

test: venv  ## all tests (slow end-to-end cases included)
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: venv  ## tests without the slow end-to-end cases
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

compile: venv  ## compile pipelines (pipelines/compiled/*.yaml) and components (components/*/component.yaml)
	$(VENV)/bin/crossdistill pipeline compile

upload: compile  ## upload/version the pipelines on KFP_HOST (KFP_NAMESPACE, KFP_TOKEN from the environment)
	$(VENV)/bin/crossdistill pipeline upload

images:  ## build the container images with docker or podman (says so when no engine answers)
	bash images/build.sh

validate: venv  ## build every kustomize overlay, schema-check it, hadolint + checkov on manifests and Dockerfiles
	$(PY) scripts/validate.py

bench: venv  ## throughput: co-located vs remote vs offline teacher, serving overhead, TLS + token cost (prints a table)
	$(PY) benchmarks/throughput.py

bench-serving-cost: venv  ## where a served teacher's CPU goes per request (event loop, forward, compute, gRPC) vs bare gRPC
	$(PY) -m benchmarks.serving_cost $(SERVING_COST_ARGS)

bench-quality: venv  ## distillation quality suite (Fashion-MNIST; ~45 min cold on 2 cores, teachers cached)
	$(PY) -m benchmarks.quality $(QUALITY_ARGS)

bench-scale: venv  ## peak RSS, samples/s, bytes read of import/pseudo-label/train at 100k-4M rows + Fashion-MNIST 1.4M (long)
	$(PY) -m benchmarks.scale $(SCALE_ARGS)

bench-replicas: venv  ## teacher replicas: online training against 1/2/4/8 replicas of an accelerator-bound teacher
	$(PY) -m benchmarks.replicas $(REPLICAS_ARGS)

bench-data-parallel: venv  ## data-parallel student: 1 process vs 2 torchrun ranks (CNN on Fashion-MNIST)
	$(PY) -m benchmarks.data_parallel $(DATA_PARALLEL_ARGS)

bench-token-bytes: venv  ## bytes per token on the wire and on disk: dense vs top-k at two vocabulary sizes
	$(PY) -m benchmarks.token_bytes $(TOKEN_BYTES_ARGS)

bench-latency: venv  ## latency hiding: online training through a delay proxy at 0/10/50/100 ms round trip
	$(PY) -m benchmarks.latency $(LATENCY_ARGS)

lint: venv  ## ruff
	$(VENV)/bin/ruff check src tests components pipelines benchmarks examples

format: venv
	$(VENV)/bin/ruff format src tests components pipelines benchmarks examples

clean:
	rm -rf $(VENV) $(MLSERVER_VENV) runs .pytest_cache .ruff_cache
