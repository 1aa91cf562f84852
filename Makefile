# Two commands on a fresh machine with Python 3.11+: `make demo` and `make test`. Each sets itself up.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.ci-mcp-installed
# Bytecode is written: a shell that turns it off would have every test worker and spawned server compile the
# sources again (about 3 CPU-seconds per pytest worker's collection alone).
unexport PYTHONDONTWRITEBYTECODE

.PHONY: setup demo test test-fast lint typecheck bench bench-peers package bundle mcpb-cli client-clis registry-schema image test-path-walk clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	bash scripts/system-deps.sh
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[analysis,classic,dev]'
	touch $(STAMP)

demo: setup
	$(PY) examples/analyze_csv.py

# The suite runs on TEST_WORKERS pytest-xdist workers, each test on whichever worker is free, except that the tests
# of a module with a module-scoped fixture (an emulator, a built wheel) stay on one worker together (--dist loadgroup;
# tests/conftest.py marks them); much of its time is spent waiting on kernels and subprocesses, so more workers than
# cores pays. TEST_WORKERS=0 runs it in one process.
TEST_WORKERS ?= 4
PYTEST_PARALLEL = -n $(TEST_WORKERS) --dist loadgroup

test: setup lint typecheck mcpb-cli client-clis registry-schema
	$(PY) -m pytest -q $(PYTEST_PARALLEL)
	$(MAKE) --no-print-directory package

# The local backend's tests with session directories walked by paths, as on Windows (no directory file descriptors).
# Not part of `make test`: there, tests/unit/test_workspace.py, tests/local/test_host_walk.py and every local test
# marked `usefixtures("each_walk")` (the ones whose files the host walks) run with both walks already.
test-path-walk: setup
	$(PY) -m pytest -q $(PYTEST_PARALLEL) --walk=paths tests/local/test_tools.py tests/local/test_sessions.py \
		tests/local/test_store_limits.py tests/local/test_hostile.py tests/local/test_output_caps.py

# The inner loop, in seconds: the MCP surface over a scripted backend and the unit tests; everything but the slow
# groups (azure, hostile, e2e, kernel; see tests/conftest.py). `make test` runs them all.
test-fast: setup
	$(PY) -m pytest -q -m "not azure and not hostile and not e2e and not kernel"

lint: setup
	$(VENV)/bin/ruff check src tests examples benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks examples

typecheck: setup
	$(VENV)/bin/mypy

bench: setup
	$(PY) benchmarks/bench_stdio.py

bench-peers: setup
	$(PY) benchmarks/bench_peers.py

# Build the wheel and sdist, check them with twine, install the wheel into a fresh venv (no project source on the
# path) and run `ci-mcp doctor` from it, as a user would after `pip install ci-mcp`.
PKG_VENV := build/package-venv
package: setup
	rm -rf dist $(PKG_VENV) build/package-data
	$(PY) -m build --outdir dist .
	$(PY) -m twine check --strict dist/*
	$(PYTHON) -m venv $(PKG_VENV)
	$(PKG_VENV)/bin/python -m pip install --quiet --compile dist/*.whl
	cd build && CI_MCP_DATA_DIR=$(CURDIR)/build/package-data CI_MCP_ALLOWED_DIRS=$(CURDIR)/build \
		package-venv/bin/ci-mcp doctor
	$(PY) -m pytest -q -p no:cacheprovider tests/packaging/test_container.py -k entry_command \
		--image-entry=$(CURDIR)/$(PKG_VENV)/bin/ci-mcp

# The container image (Dockerfile), with whichever builder answers: docker (a daemon), else podman (none needed).
CONTAINER ?= $(shell if docker info >/dev/null 2>&1; then echo docker; elif podman info >/dev/null 2>&1; then echo podman; fi)
IMAGE ?= ci-mcp
image:
	@if [ -z "$(CONTAINER)" ]; then echo "no container builder answers (docker info, podman info): install one" >&2; exit 1; fi
	$(CONTAINER) build -t $(IMAGE) .
	$(CONTAINER) run --rm $(IMAGE) --version

# The MCP Bundle (.mcpb) for Claude Desktop: manifest (packaging/mcpb/manifest.json) plus the project source; the
# host runs it with uv (server type "uv"), which installs the dependencies on first start. Needs npm for the
# official CLI (@anthropic-ai/mcpb), installed under build/npm.
MCPB_VERSION ?= 2.1.2
MCPB := build/npm/node_modules/.bin/mcpb
BUNDLE_DIR := build/bundle

$(MCPB):
	npm install --silent --no-audit --no-fund --prefix build/npm @anthropic-ai/mcpb@$(MCPB_VERSION)

# What `make test` needs to validate the manifest: the CLI where npm exists, a notice (and a skipped test) otherwise.
mcpb-cli:
	@if ! command -v npm >/dev/null 2>&1; then echo "npm not found: the MCP Bundle manifest tests will be skipped"; \
	else $(MAKE) --no-print-directory $(MCPB) || echo "could not install $(MCPB): its tests will be skipped"; fi

# The clients the README's set-up commands are for (tests/packaging/test_client_commands.py runs them as written):
# Claude Code and the MCP Inspector from npm under build/npm; `uvx` comes with the dev extra (uv). Where npm is
# missing or the registry does not answer, a notice, and those tests are skipped.
CLAUDE_CODE_VERSION ?= 2.1.332
INSPECTOR_VERSION ?= 0.15.0
CLAUDE := build/npm/node_modules/.bin/claude
INSPECTOR := build/npm/node_modules/@modelcontextprotocol/inspector/package.json

$(CLAUDE) $(INSPECTOR):
	npm install --silent --no-audit --no-fund --prefix build/npm \
		@anthropic-ai/claude-code@$(CLAUDE_CODE_VERSION) @modelcontextprotocol/inspector@$(INSPECTOR_VERSION)

client-clis:
	@if ! command -v npm >/dev/null 2>&1; then echo "npm not found: the README's Claude Code and Inspector commands will not be checked"; \
	else $(MAKE) --no-print-directory $(CLAUDE) $(INSPECTOR) || echo "could not install the client CLIs: their tests will be skipped"; fi

# The MCP registry's schema for server.json (the version its $schema names), for the test that validates it; where it
# cannot be downloaded, a notice and a skipped test.
registry-schema:
	@$(PYTHON) scripts/registry-schema.py

bundle: $(MCPB)
	rm -rf $(BUNDLE_DIR) && mkdir -p $(BUNDLE_DIR) dist
	cp packaging/mcpb/manifest.json pyproject.toml README.md LICENSE NOTICE $(BUNDLE_DIR)/
	cp -r src $(BUNDLE_DIR)/src
	find $(BUNDLE_DIR) -name __pycache__ -prune -exec rm -rf {} + ; rm -rf $(BUNDLE_DIR)/src/*.egg-info
	$(MCPB) validate $(BUNDLE_DIR)/manifest.json
	$(MCPB) pack $(BUNDLE_DIR) dist/ci-mcp.mcpb

clean:
	rm -rf $(VENV) build dist *.egg-info examples/output
