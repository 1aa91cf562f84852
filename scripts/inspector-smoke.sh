#!/usr/bin/env bash
# ci-mcp through a third-party MCP client: the MCP Inspector's command-line mode (from npm), over stdio and over
# streamable HTTP. Needs node/npm; installs the inspector into a temporary directory.
#
#     bash scripts/inspector-smoke.sh          (from the repository root, after `make setup`)
#
# The inspector CLI 0.15 (what npm resolves on Node 20) has no header option, so HTTP is checked on loopback without a
# token; token checks are in tests/local/test_http_auth.py.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}"
work="$(mktemp -d)"
trap 'kill "${server:-0}" 2>/dev/null || true; rm -rf "$work"' EXIT
(cd "$work" && npm install --silent --no-audit --no-fund @modelcontextprotocol/inspector >/dev/null)
cli="$work/node_modules/@modelcontextprotocol/inspector-cli/build/index.js"
export CI_MCP_DATA_DIR="$work/data" CI_MCP_KERNEL_POOL_SIZE=0

echo "== stdio: tools/call run_code_analysis"
node "$cli" "$PY" -m ci_mcp --method tools/call --tool-name run_code_analysis --tool-arg 'code=print(6*7)' \
  | tee "$work/stdio.json" | grep -q '"text": "42\\n"'

port=$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$PY" -m ci_mcp serve --transport http --port "$port" 2>"$work/server.log" &
server=$!
for _ in $(seq 100); do grep -q "serving MCP at" "$work/server.log" && break; sleep 0.1; done
echo "== http: tools/list and tools/call"
node "$cli" "http://127.0.0.1:$port/mcp" --method tools/list | grep -q '"name": "fetch_generated_file"'
node "$cli" "http://127.0.0.1:$port/mcp" --method tools/call --tool-name run_code_analysis \
  --tool-arg 'code=print(2**10)' | grep -q '"text": "1024\\n"'
echo "inspector smoke: ok"
