# The two commands: `make demo` (every experiment in quick mode + the report) and
# `make test` (the suite). Both create the virtual environment and install when needed.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.installed-bench

.PHONY: demo test test-slow bench lint format clean reproduce reproduce-1 reproduce-2 reproduce-3

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
# Full mode takes about 85 minutes on two CPU cores (`wall_seconds` in each metrics.json), so
# it is split into three independent parts of 20-40 minutes (run them anywhere, in any order);
# `make reproduce` runs all three, the quick mode, the reports and the table.
REPRODUCE_1 = noise_reduction continuous_vs_discrete smoothing staleness_aware
REPRODUCE_2 = nonconvex_stabilization convex_bounds delay_stability delay_coupling gem_scaling sde_weak_order
REPRODUCE_3 = broadcast_success easgd_regularization async_generalization decentralized async_easgd svag_networks

reproduce: reproduce-1 reproduce-2 reproduce-3 $(STAMP)
	$(PY) -m experiments report --out docs/results
	$(PY) -m experiments all --quiet --quick --out docs/results/quick
	$(PY) -m experiments table --results docs/results --readme README.md

reproduce-1 reproduce-2 reproduce-3: $(STAMP)
	for name in $(REPRODUCE_$(subst reproduce-,,$@)); do \
		$(PY) -m experiments run $$name --quiet --out docs/results || exit 1; done

# One pytest worker per CPU, at most 4 (pytest-xdist; `make test TEST_WORKERS=1` runs in one
# process); a test module stays on one worker, so its module-scoped fixtures (the sharding and
# multi-process runs) start once.
TEST_WORKERS ?= $(shell n=$$(nproc 2>/dev/null || echo 2); [ $$n -gt 4 ] && n=4; echo $$n)

test: $(STAMP)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadscope

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow -n $(TEST_WORKERS) --dist loadscope

bench: $(BENCH_STAMP)
	$(PY) -m benchmarks

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean:
	rm -rf $(VENV) results .pytest_cache
