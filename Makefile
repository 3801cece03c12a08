# The two commands: `make demo` (every experiment in quick mode + the report) and
# `make test` (the suite). Both create the virtual environment and install when needed.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.installed-bench

.PHONY: demo test test-slow bench lint format clean reproduce

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[test]'
	touch $(STAMP)

$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install -q -c constraints.txt -e '.[test,bench]'
	touch $(BENCH_STAMP)

demo: $(STAMP)
	$(PY) -m experiments all --quick
	@echo "Open results/report.html"

# Paper-scale results shipped in the repository: every experiment in full mode (docs/results/)
# and in quick mode (docs/results/quick/), the reports, and the README's table from them.
reproduce: $(STAMP)
	$(PY) -m experiments all --quiet --out docs/results
	$(PY) -m experiments all --quiet --quick --out docs/results/quick
	$(PY) -m experiments table --results docs/results --readme README.md

test: $(STAMP)
	$(PY) -m pytest -q

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

bench: $(BENCH_STAMP)
	$(PY) -m benchmarks

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean:
	rm -rf $(VENV) results benchmarks/results
