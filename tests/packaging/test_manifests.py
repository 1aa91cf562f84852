"""The distribution manifests: the MCP registry's `server.json` and the MCP Bundle's `manifest.json`.

The bundle manifest is validated with the official CLI (`@anthropic-ai/mcpb`, installed by `make test` where npm
exists); `server.json` is validated with jsonschema against the registry's own schema (the version its `$schema`
names), where a copy is here: `make registry-schema` downloads it into build/registry/ (tests have no network), or
one vendored at packaging/registry/server.schema.json. Without either that test is skipped and says so; the
registry's publishing rules that matter here are checked either way.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from mcp import Client

from ci_mcp import __version__
from ci_mcp.cli import _parser, load_settings
from tests.conftest import REPO

MANIFEST = REPO / "packaging" / "mcpb" / "manifest.json"
SERVER_JSON = REPO / "server.json"
MCPB_PACKAGE = REPO / "build" / "npm" / "node_modules" / "@anthropic-ai" / "mcpb"
REGISTRY_SCHEMAS = (  # a vendored copy, then the one `make registry-schema` downloads
    REPO / "packaging" / "registry" / "server.schema.json",
    REPO / "build" / "registry" / "server.schema.json",
)


def registry_schema() -> Path | None:
    return next((p for p in REGISTRY_SCHEMAS if p.exists()), None)


def mcpb_cli() -> str | None:
    local = MCPB_PACKAGE.parent.parent / ".bin" / "mcpb"
    return str(local) if local.exists() else shutil.which("mcpb")


needs_mcpb = pytest.mark.skipif(
    mcpb_cli() is None or shutil.which("node") is None,
    reason="the MCP Bundle CLI is not installed (`make mcpb-cli` installs @anthropic-ai/mcpb with npm)",
)


def load(path: Path) -> Any:
    return json.loads(path.read_text())


@needs_mcpb
def test_bundle_manifest_passes_the_official_validator() -> None:
    cli = mcpb_cli()
    assert cli is not None
    done = subprocess.run([cli, "validate", str(MANIFEST)], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


@needs_mcpb
def test_bundle_folder_picker_reaches_the_server_as_allowed_dirs(tmp_path: Path) -> None:
    """The host expands the picked folders into the command line (the mcpb library's own expansion); the server's
    command line parses them into its allowed directories."""
    if not (MCPB_PACKAGE / "dist" / "index.js").exists():
        pytest.skip("the mcpb library is only importable from a local install (`make mcpb-cli`)")
    picked = [str(tmp_path / "a"), str(tmp_path / "b b")]
    script = f"""
import {{ getMcpConfigForManifest }} from {json.dumps(str(MCPB_PACKAGE / "dist" / "index.js"))};
import fs from "fs";
const manifest = JSON.parse(fs.readFileSync({json.dumps(str(MANIFEST))}));
const cfg = await getMcpConfigForManifest({{ manifest, extensionPath: "/ext", systemDirs: {{}},
  userConfig: {{ allowed_dirs: {json.dumps(picked)} }}, pathSeparator: "/" }});
console.log(JSON.stringify(cfg));
"""
    (tmp_path / "cfg.mjs").write_text(script)
    done = subprocess.run(["node", str(tmp_path / "cfg.mjs")], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    config = json.loads(done.stdout)
    assert config["command"] == "uv"
    args: list[str] = config["args"]
    assert args[:3] == ["run", "--directory", "/ext"]
    server_args = args[args.index("ci-mcp") + 1 :]
    settings = load_settings(_parser().parse_args(server_args))
    assert [str(p) for p in settings.allowed_dirs] == picked
    assert settings.backend == "local"


@pytest.mark.anyio
async def test_bundle_manifest_lists_the_server_tools_and_the_package_version(client: Client) -> None:
    manifest = load(MANIFEST)
    assert manifest["version"] == __version__
    tools = await client.list_tools()
    assert sorted(t["name"] for t in manifest["tools"]) == sorted(t.name for t in tools.tools)
    picker = manifest["user_config"]["allowed_dirs"]
    assert picker["type"] == "directory" and picker["multiple"] is True


def test_server_json_names_the_pypi_package_at_this_version_and_readme_carries_its_name() -> None:
    server = load(SERVER_JSON)
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert re.fullmatch(r"[a-zA-Z0-9.-]+/[a-zA-Z0-9._-]+", server["name"])
    assert server["name"].startswith("io.github.")  # the namespace GitHub sign-in can publish
    assert 1 <= len(server["description"]) <= 100
    assert server["$schema"].startswith("https://static.modelcontextprotocol.io/schemas/")
    (package,) = server["packages"]
    assert package["registryType"] == "pypi" and package["identifier"] == project["name"]
    assert package["version"] == server["version"] == project["version"] == __version__
    assert package["transport"] == {"type": "stdio"}
    # PyPI ownership: the registry looks for this marker in the package's README (its long description)
    assert f"<!-- mcp-name: {server['name']} -->" in (REPO / project["readme"]).read_text()


@pytest.mark.skipif(
    registry_schema() is None,
    reason="the MCP registry's server.json schema is not here: `make registry-schema` downloads it (from the URL in "
    "server.json's $schema) into build/registry/",
)
def test_server_json_is_valid_against_the_registry_schema_it_names() -> None:
    path = registry_schema()
    assert path is not None
    schema = load(path)
    server = load(SERVER_JSON)
    assert schema["$id"] == server["$schema"], f"{path} is another version of the schema than server.json names"
    validator_class = jsonschema.validators.validator_for(schema)
    validator_class.check_schema(schema)
    validator = validator_class(schema, format_checker=validator_class.FORMAT_CHECKER)
    errors = [f"{'/'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}" for e in validator.iter_errors(server)]
    assert errors == [], "\n".join(errors)
