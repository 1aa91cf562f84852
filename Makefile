# Two commands on a fresh machine with Python 3.11+: `make demo` and `make test`. Each sets itself up.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.ci-mcp-installed

.PHONY: setup demo test test-fast lint typecheck bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	bash scripts/system-deps.sh
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[analysis,classic,dev]'
	touch $(STAMP)

demo: setup
	$(PY) examples/analyze_csv.py

test: setup lint typecheck
	$(PY) -m pytest -q

# The inner loop: everything but the slow groups (azure, hostile, e2e; see tests/conftest.py).
test-fast: setup
	$(PY) -m pytest -q -m "not azure and not hostile and not e2e"

lint: setup
	$(VENV)/bin/ruff check src tests examples benchmarks
	$(VENV)/bin/ruff format --check src tests

typecheck: setup
	$(VENV)/bin/mypy

bench: setup
	$(PY) benchmarks/bench_stdio.py

clean:
	rm -rf $(VENV) build *.egg-info examples/output
