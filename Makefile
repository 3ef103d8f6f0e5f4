# Two commands on a fresh machine: `make demo` and `make test`.
# Everything lives in .venv; nothing is installed system-wide.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
# Where no torch is present, install this one first (a CPU build lies on disk on the project's
# machines). GPU users: install the torch build for your CUDA before `make setup`, it is kept.
TORCH_SPEC ?= torch==2.13.0

.PHONY: setup demo demo-models test clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

setup: $(VENV)/.installed

demo: setup
	HF_HUB_OFFLINE=1 $(BIN)/os-sample generate --config recipes/demo.yaml --output outputs/demo --overwrite
	@echo "Next: $(BIN)/os-sample inspect outputs/demo"

# Retrain the built-in demo pair (deterministic, about 7 minutes on 2 CPU cores).
demo-models: setup
	$(BIN)/python scripts/train_demo.py

test: setup
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest

clean:
	rm -rf $(VENV) build *.egg-info
