# Two set-up commands: `make demo` and `make test`. Everything installs into .venv.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed

.PHONY: install demo test test-gpu bench clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip
	# torch is pinned so pip takes the CPU wheel, not a multi-GB CUDA build.
	$(PIP) install torch==2.13.0
	$(PIP) install -e '.[cpu,train,dev,cluster]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) cli.py demo

test: $(STAMP)
	$(PY) -m pytest -q

test-gpu: $(STAMP)
	$(PY) -m pytest -q -m gpu

bench: $(STAMP)
	$(PY) benchmarks/throughput.py --json benchmarks/results/throughput.json --markdown benchmarks/results/throughput.md

clean:
	rm -rf $(VENV) out .pytest_cache
