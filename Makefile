# Set-up and everyday commands. Each target creates the virtual environment it needs (.venv).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo train test lint fast-test bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# the CPU wheel of torch first (any other torch request would pull a multi-GB CUDA build)
	$(BIN)/python -m pip install --quiet "torch==2.13.0"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

# The main job: VGPO on the embedded compositional task (CPU, minutes).
demo: $(STAMP)
	$(BIN)/vgpo train configs/embedded/compositional_vgpo.yaml --out runs/demo

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

test: lint
	$(BIN)/pytest -q

fast-test: $(STAMP)
	$(BIN)/pytest -q -x

bench: $(STAMP)
	$(BIN)/vgpo bench

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
