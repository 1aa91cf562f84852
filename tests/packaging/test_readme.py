"""The README's client set-up is copied by users: its JSON blocks must parse, and its config shapes must be the ones
each client reads (`mcpServers` for Claude Desktop and Cursor, `servers` with a `type` for VS Code)."""

from __future__ import annotations

import json
import re

from tests.conftest import REPO

README = (REPO / "README.md").read_text()


def json_blocks() -> list[object]:
    return [json.loads(block) for block in re.findall(r"```json\n(.*?)```", README, flags=re.DOTALL)]


def test_every_json_block_in_the_readme_parses() -> None:
    assert len(json_blocks()) >= 3


def test_client_configs_name_the_server_with_a_command_the_install_provides() -> None:
    configs = [b for b in json_blocks() if isinstance(b, dict) and ("mcpServers" in b or "servers" in b)]
    assert configs
    for config in configs:
        servers = config.get("mcpServers") or config["servers"]
        for entry in servers.values():
            if "url" in entry:
                assert entry["url"].endswith("/mcp")
                continue
            argv = [entry["command"], *entry.get("args", [])]
            assert argv[-1] == "ci-mcp" or argv[0].endswith("ci-mcp"), argv
            if "servers" in config:  # VS Code needs the transport type
                assert entry["type"] == "stdio"
