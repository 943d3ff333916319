# TORCH is what `make install` installs when torch is not importable yet.
# On a CPU-only machine with the wheel on disk: make install TORCH=torch==2.13.0
TORCH ?= torch
PYTHON ?= python

.PHONY: install test test-all bench bench-arch lint

install:
	$(PYTHON) -c "import torch" 2>/dev/null || $(PYTHON) -m pip install "$(TORCH)"
	$(PYTHON) -m pip install -e ".[dev,eval,lora]"

test:
	$(PYTHON) -m pytest -q

bench:
	$(PYTHON) bench/run_all.py

# Every *_nano architecture preset on the same data, tokens and seed (CPU, one thread, ~10 min): one table.
bench-arch:
	$(PYTHON) bench/compare_architectures.py

lint:
	$(PYTHON) -m ruff check src tests bench
	lint-imports   # the layers contract in pyproject.toml: imports point down only, no cycles
