# Two commands on a fresh machine with Python 3.11+: `make demo` and `make test`. Each sets itself up.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.ci-mcp-installed

.PHONY: setup demo test lint typecheck bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	bash scripts/system-deps.sh
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[analysis,classic,dev]'
	touch $(STAMP)

demo: setup
	$(PY) examples/analyze_csv.py

test: setup
	$(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check src tests examples benchmarks
	$(VENV)/bin/ruff format --check src

typecheck: setup
	$(VENV)/bin/mypy

bench: setup
	$(PY) benchmarks/bench_stdio.py

clean:
	rm -rf $(VENV) build *.egg-info examples/output
