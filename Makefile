# Two commands on a fresh machine: `make demo` and `make test`.
# Everything lives in .venv; nothing is installed system-wide.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
# Where .venv has no torch, `make setup` installs TORCH_SPEC first; a torch already there is kept.
# From PyPI on Linux that is the CUDA build (about 2.5 GB with its CUDA libraries). For the CPU-only
# build (a few hundred MB) give the CPU wheel index:
#   make demo TORCH_INDEX=https://download.pytorch.org/whl/cpu
# The default (no index) is what works on the project's machines, whose pip finds a CPU wheel on disk.
TORCH_SPEC  ?= torch==2.13.0
TORCH_INDEX ?=
TORCH_PIP_ARGS = $(if $(strip $(TORCH_INDEX)),--index-url $(strip $(TORCH_INDEX)),)

.PHONY: setup demo demo-models lint test clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml setup.py | $(BIN)/python
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q $(TORCH_PIP_ARGS) "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

setup: $(VENV)/.installed

demo: setup
	HF_HUB_OFFLINE=1 $(BIN)/os-sample generate --config recipes/demo.yaml --output outputs/demo --overwrite
	@echo "Next: $(BIN)/os-sample inspect outputs/demo"

# Retrain the built-in demo pair (deterministic, about 7 minutes on 2 CPU cores).
demo-models: setup
	$(BIN)/python scripts/train_demo.py

# Lint, format check and type check of the package (seconds); `make test` runs them first.
lint: setup
	$(BIN)/ruff check os_cli optimal_sampling_hf
	$(BIN)/ruff format --check os_cli optimal_sampling_hf
	$(BIN)/mypy

test: setup lint
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest

clean:
	rm -rf $(VENV) build *.egg-info

