"""`ci-mcp` with CI_MCP_BACKEND=azure or azure-classic launched as a real subprocess over stdio, configured only
through its environment, authenticating with the real DefaultAzureCredential (managed identity, served by the
emulator) and trusting the endpoint through CI_MCP_AZURE_CA_BUNDLE: the walk-through, as a desktop client runs it."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from mcp import Client, StdioServerParameters

from tests.azure_emulator.scripted import nifty_chart_model
from tests.azure_emulator.server import Emulator
from tests.conftest import NIFTY_CSV, all_text, generated_ids, images, uploaded_id

pytestmark = pytest.mark.anyio

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("backend", "described_as"), [("azure", "Azure AI Foundry"), ("azure-classic", "classic agents")]
)
async def test_the_walk_through_runs_on_an_azure_backend_over_stdio(
    contract_emulator: Emulator, tmp_path: Path, backend: str, described_as: str
) -> None:
    emu = contract_emulator
    emu.state.model = nifty_chart_model
    emu.state.extra["managed_identity_tokens"] = 0
    work = tmp_path / "work"
    work.mkdir()
    (work / NIFTY_CSV.name).write_bytes(NIFTY_CSV.read_bytes())
    assert emu.ca_file is not None
    env = {
        "PATH": os.environ.get("PATH", ""),
        "PYTHONPATH": str(REPO / "src"),  # the code under test, not whatever ci_mcp the interpreter has installed
        "HOME": str(tmp_path),
        "CI_MCP_BACKEND": backend,
        "AZURE_AI_PROJECT_ENDPOINT": emu.endpoint,
        "CI_MCP_AZURE_CA_BUNDLE": emu.ca_file,
        "CI_MCP_DATA_DIR": str(tmp_path / "data"),
        "CI_MCP_ALLOWED_DIRS": str(work),
        **emu.managed_identity_env(),
    }
    params = StdioServerParameters(command=sys.executable, args=["-m", "ci_mcp"], env=env, cwd=str(work))
    async with Client(params, read_timeout_seconds=120) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
        assert described_as in (tools["run_code_analysis"].description or "")
        fid = uploaded_id(await client.call_tool("upload_file", {"path": str(work / NIFTY_CSV.name)}))
        result = await client.call_tool(
            "run_code_analysis",
            {"request": "Bar chart of operating profit in the TRANSPORTATION sector", "file_ids": [fid]},
        )
        assert not result.is_error, all_text(result)
        assert "Adani Ports" in all_text(result)
        (png,) = images(result)
        assert png.startswith(b"\x89PNG")
        chart = generated_ids(result)["transportation_operating_profit.png"]
        fetched = await client.call_tool("fetch_generated_file", {"file_id": chart})
        assert images(fetched) == [png]
    assert int(emu.state.extra.get("managed_identity_tokens", 0)) >= 1  # the real credential chain got its token
