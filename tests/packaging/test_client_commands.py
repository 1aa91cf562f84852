"""The README's client set-up, run as written: its Claude Code and MCP Inspector command lines and its VS Code and
Cursor config files are taken from the README's text (only `/path/to/ci-mcp` becomes this repository, `$PWD` and
`$TOKEN` test values, and the HTTP port a free one) and run against the code in this clone.

The tools come from `make client-clis` (Claude Code and the Inspector from npm under build/npm) and the dev extra
(`uv`, for `uvx`); each check is skipped, saying why, where its tool is missing. `uvx --from <clone>` builds and
installs the package with its dependencies from the package index the first time (a uv cache under build/ keeps
them), and again whenever the sources change (pyproject.toml's `[tool.uv] cache-keys`).

VS Code and Cursor do not run here, and neither publishes a JSON schema for `mcp.json` that can be had offline (none
ships in an npm package; VS Code's lives in its own source): their files are checked against the fields those apps
document, and the servers they describe are started from the files' own command, args, env, url and headers and
driven by a real MCP client.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import httpx2
import pytest
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client

from tests.conftest import REPO
from tests.http_helpers import cli_http_server

README = (REPO / "README.md").read_text()
NPM_BIN = REPO / "build" / "npm" / "node_modules" / ".bin"
UV_CACHE = REPO / "build" / "uv-cache"
TOKEN = "readme-check-token-0123456789"
README_PORT = "8765"
TOOLS = {"upload_file", "run_code_analysis", "fetch_generated_file", "list_files"}


def section(title: str) -> str:
    """The README text under `### <title>`, up to the next heading."""
    match = re.search(rf"^### {re.escape(title)}\n(.*?)(?=^##)", README, flags=re.DOTALL | re.MULTILINE)
    assert match, f"the README has no section {title!r}"
    return match.group(1)


def blocks(title: str, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", section(title), flags=re.DOTALL)


def substituted(text: str, pwd: Path, port: int | str = README_PORT) -> str:
    return (
        text.replace("/path/to/ci-mcp", str(REPO))
        .replace("$PWD", str(pwd))
        .replace("$TOKEN", TOKEN)
        .replace(f":{README_PORT}/", f":{port}/")
    )


def command_lines(title: str, pwd: Path, port: int | str = README_PORT) -> list[list[str]]:
    """Each shell command of a section's `sh` blocks, continuation lines joined, comments dropped, split as a shell
    would (the README's commands use no shell features beyond quoting and the substituted variables)."""
    text = "\n".join(blocks(title, "sh")).replace("\\\n", " ")
    return [argv for line in text.splitlines() if (argv := shlex.split(substituted(line, pwd, port), comments=True))]


def config(title: str, pwd: Path, port: int | str = README_PORT) -> dict[str, object]:
    (block,) = blocks(title, "json")
    loaded = json.loads(substituted(block, pwd, port))
    assert isinstance(loaded, dict)
    return loaded


def tool_path() -> str:
    """PATH with the dev tools (`uvx` beside this interpreter) and the npm-installed clients first."""
    return os.pathsep.join([str(NPM_BIN), str(Path(sys.executable).parent), os.environ.get("PATH", "")])


@pytest.fixture(scope="module")
def clients_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A clean environment for the clients: a fresh HOME, a throwaway data directory, the shared uv cache; and `uvx
    --from <clone> ci-mcp` shown to work (once, building the clone as it is now), or the module's uvx tests skipped."""
    home = tmp_path_factory.mktemp("home")
    env = {
        "PATH": tool_path(),
        "HOME": str(home),
        "UV_CACHE_DIR": str(UV_CACHE),
        "CI_MCP_DATA_DIR": str(home / "data"),
        "CI_MCP_KERNEL_POOL_SIZE": "0",
    }
    for name in ("PIP_INDEX_URL", "UV_INDEX_URL", "SSL_CERT_FILE", "LANG"):  # how this machine reaches an index
        if name in os.environ:
            env[name] = os.environ[name]
    if shutil.which("uvx", path=env["PATH"]) is None:
        pytest.skip("uvx is not installed (the dev extra installs uv: `make setup`)")
    # uvx rebuilds the clone when its sources change: pyproject.toml's [tool.uv] cache-keys name them.
    probe = subprocess.run(
        ["uvx", "--from", str(REPO), "ci-mcp", "--version"], env=env, capture_output=True, text=True, timeout=300
    )
    if probe.returncode != 0:
        pytest.skip(f"`uvx --from {REPO} ci-mcp` does not install here (no package index?): {probe.stderr[-500:]}")
    return env


def npm_tool(name: str, package: str) -> str:
    tool = NPM_BIN / name
    if shutil.which("node") is None or not tool.exists():
        pytest.skip(
            f"{package} is not installed (`make client-clis` installs it with npm, where npm and its registry answer)"
        )
    return str(tool)


def run(argv: list[str], env: dict[str, str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)
    assert result.returncode == 0, f"{shlex.join(argv)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
    return result


# MCP Inspector


def test_the_inspector_cli_lines_list_the_tools_and_upload_a_file(clients_env: dict[str, str], tmp_path: Path) -> None:
    inspector = npm_tool("mcp-inspector", "@modelcontextprotocol/inspector")
    (tmp_path / "data.csv").write_text("a,b\n1,2\n")
    lines = [argv for argv in command_lines("MCP Inspector (debugging)", tmp_path) if "--cli" in argv]
    assert len(lines) == 2, lines  # the web UI line serves a page until stopped: not run here
    answers = []
    for argv in lines:
        assert argv[:2] == ["npx", "@modelcontextprotocol/inspector"], argv
        # npx of an installed package is its bin: run that one, so npx does not fetch another version
        answers.append(json.loads(run([inspector, *argv[2:]], clients_env, tmp_path).stdout))
    listed, uploaded = answers
    assert {tool["name"] for tool in listed["tools"]} >= TOOLS
    assert uploaded["isError"] is False, uploaded
    assert 'Uploaded "data.csv" as file-' in uploaded["content"][0]["text"]


# Claude Code


def test_claude_code_adds_both_servers_and_reports_them_connected(clients_env: dict[str, str], tmp_path: Path) -> None:
    claude = npm_tool("claude", "@anthropic-ai/claude-code")
    project = tmp_path / "project"
    project.mkdir()
    home = Path(clients_env["HOME"])
    with cli_http_server(tmp_path, {"CI_MCP_HTTP_TOKENS": f"readme:{TOKEN}"}) as served:
        lines = command_lines("Claude Code", project, served.port)
        assert [argv[:3] for argv in lines] == [["claude", "mcp", "add"]] * 2 + [["claude", "mcp", "list"]], lines
        outputs = [run([claude, *argv[1:]], clients_env, project).stdout for argv in lines]
    listed = outputs[-1]
    assert re.search(r"^ci-mcp: .*✔ Connected", listed, flags=re.MULTILINE), listed
    assert re.search(r"^ci-mcp-http: .*✔ Connected", listed, flags=re.MULTILINE), listed
    # what it wrote: the stdio server as the README gives it, the HTTP one with its header
    servers = json.loads((home / ".claude.json").read_text())["projects"][str(project)]["mcpServers"]
    assert servers["ci-mcp"] == {
        "type": "stdio",
        "command": "uvx",
        "args": ["--from", str(REPO), "ci-mcp"],
        "env": {"CI_MCP_ALLOWED_DIRS": str(project)},
    }
    assert servers["ci-mcp-http"] == {
        "type": "http",
        "url": f"http://127.0.0.1:{served.port}/mcp",
        "headers": {"Authorization": f"Bearer {TOKEN}"},
    }


# VS Code and Cursor: the documented fields, then the servers the files describe, started from the files


def check_vscode_fields(cfg: dict[str, object]) -> None:
    """VS Code's documented `mcp.json`: `servers` by name, each `type` stdio (`command`, optional `args`, `env`,
    `envFile`, `cwd`) or http/sse (`url`, optional `headers`); `inputs` of type promptString/pickString with an `id`,
    each `${input:id}` a declared input."""
    assert set(cfg) <= {"servers", "inputs"}, cfg
    inputs = cfg.get("inputs", [])
    assert isinstance(inputs, list)
    ids = set()
    for entry in inputs:
        assert entry["type"] in {"promptString", "pickString"} and isinstance(entry["id"], str), entry
        assert set(entry) <= {"type", "id", "description", "password", "default", "options"}, entry
        ids.add(entry["id"])
    servers = cfg["servers"]
    assert isinstance(servers, dict) and servers
    for name, server in servers.items():
        if server["type"] == "stdio":
            assert set(server) <= {"type", "command", "args", "env", "envFile", "cwd"}, (name, server)
            assert isinstance(server["command"], str)
        else:
            assert server["type"] in {"http", "sse"}, (name, server)
            assert set(server) <= {"type", "url", "headers"}, (name, server)
            assert server["url"].startswith(("http://", "https://"))
        assert all(isinstance(v, str) for v in server.get("args", []) + list(server.get("env", {}).values()))
    assert set(re.findall(r"\$\{input:([^}]+)\}", json.dumps(servers))) <= ids


def check_cursor_fields(cfg: dict[str, object]) -> None:
    """Cursor's documented `mcp.json`: `mcpServers` by name, each `command` (with `args`, `env`) or `url`."""
    assert set(cfg) == {"mcpServers"}, cfg
    servers = cfg["mcpServers"]
    assert isinstance(servers, dict) and servers
    for name, server in servers.items():
        assert set(server) <= {"type", "command", "args", "env", "envFile", "url", "headers"}, (name, server)
        assert ("command" in server) != ("url" in server), (name, server)


async def list_over_stdio(server: dict[str, object], env: dict[str, str], cwd: Path) -> set[str]:
    params = StdioServerParameters(
        command=str(server["command"]),
        args=list(server.get("args", [])),  # type: ignore[call-overload]
        env={**env, **server.get("env", {})},  # type: ignore[dict-item]
        cwd=str(cwd),
    )
    async with Client(params) as client:
        return {tool.name for tool in (await client.list_tools()).tools}


@pytest.mark.anyio
async def test_the_vscode_file_describes_servers_a_client_reaches(clients_env: dict[str, str], tmp_path: Path) -> None:
    raw = config("VS Code", tmp_path)
    check_vscode_fields(raw)
    with cli_http_server(tmp_path, {"CI_MCP_HTTP_TOKENS": f"readme:{TOKEN}"}) as served:
        # what VS Code substitutes: the workspace folder, and the token the user types at the prompt
        text = json.dumps(config("VS Code", tmp_path, served.port)["servers"])
        servers = json.loads(text.replace("${workspaceFolder}", str(tmp_path)).replace("${input:ci-mcp-token}", TOKEN))
        stdio = servers["ci-mcp"]
        assert stdio["env"]["CI_MCP_ALLOWED_DIRS"] == str(tmp_path)
        assert await list_over_stdio(stdio, clients_env, tmp_path) >= TOOLS
        http = servers["ci-mcp-http"]
        web = httpx2.AsyncClient(headers=http["headers"], timeout=httpx2.Timeout(60))
        async with web, Client(streamable_http_client(http["url"], http_client=web)) as client:
            assert {tool.name for tool in (await client.list_tools()).tools} >= TOOLS


@pytest.mark.anyio
async def test_the_cursor_file_starts_a_server_a_client_reaches(clients_env: dict[str, str], tmp_path: Path) -> None:
    cfg = config("Cursor", tmp_path)
    check_cursor_fields(cfg)
    server = cfg["mcpServers"]["ci-mcp"]  # type: ignore[index]
    server["env"]["CI_MCP_ALLOWED_DIRS"] = str(tmp_path)  # the README's "/path/to/your/data"
    assert await list_over_stdio(server, clients_env, tmp_path) >= TOOLS


def test_module_helpers_read_the_readme_as_a_user_copies_it(tmp_path: Path) -> None:
    """The parsing itself: continuation lines join, comments go, quoting is a shell's."""
    lines = command_lines("MCP Inspector (debugging)", tmp_path)
    assert lines[-1][-2:] == ["--tool-arg", f"path={tmp_path}/data.csv"]
    assert all("#" not in arg for argv in lines for arg in argv)
