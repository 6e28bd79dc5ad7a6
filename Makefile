# One venv for everything; torch is pinned first so pip takes the CPU build on disk
# instead of downloading a multi-GB CUDA one.
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: demo test test-all bench

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e .[dev]
	touch $@

demo: $(VENV)/.installed
	$(PY) -m pretrainer.demo

# CI runs `test`, which leaves out the torch.compile tests to stay in its 10 minutes; `test-all` runs everything
test: $(VENV)/.installed
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(PY) -m pytest -q -m "not compile"

test-all: $(VENV)/.installed
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(PY) -m pytest -q

bench: $(VENV)/.installed
	$(PY) benchmarks/train_throughput.py
