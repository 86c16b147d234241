# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The CPU build of torch stored on these machines; an unpinned torch pulls a multi-GB CUDA build.
TORCH  ?= torch==2.13.0

.PHONY: demo test test-all bench evaluate lint api-docs clean

$(BIN)/wsi-fusion: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[learned,dev]"
	touch $@

demo: $(BIN)/wsi-fusion
	$(BIN)/wsi-fusion demo --output demo_output

test: $(BIN)/wsi-fusion
	$(BIN)/python -m pytest -q -m "not slow and not gpu"

test-all: $(BIN)/wsi-fusion
	$(BIN)/python -m pytest -q

bench: $(BIN)/wsi-fusion
	$(BIN)/python benchmarks/bench_pipeline.py

evaluate: $(BIN)/wsi-fusion
	$(BIN)/python workflows/evaluate.py

api-docs: $(BIN)/wsi-fusion
	$(BIN)/python -m wsi_fusion._apidoc > docs/API.md

lint: $(BIN)/wsi-fusion
	$(BIN)/ruff check wsi_fusion tests workflows benchmarks

clean:
	rm -rf $(VENV) demo_output .pytest_cache
