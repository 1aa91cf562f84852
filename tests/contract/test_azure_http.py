"""The Azure backends served over streamable HTTP with a token, as a real `ci-mcp serve` subprocess against the
emulator: progress reaches the HTTP client, and cancelling a call stops the remote run so the session goes on."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from tests.azure_emulator.server import Emulator
from tests.azure_emulator.state import Faults, default_model
from tests.conftest import all_text, session_of
from tests.http_helpers import cli_http_server, client_for

pytestmark = pytest.mark.anyio

TOKEN = "agent-token-0123456789abcdef"


@pytest.mark.parametrize("backend", ["azure", "azure-classic"])
async def test_progress_and_cancellation_reach_the_azure_backends_over_http(
    contract_emulator: Emulator, tmp_path: Path, backend: str
) -> None:
    emu = contract_emulator
    emu.state.model = default_model
    emu.state.faults = Faults()
    assert emu.ca_file is not None
    env = {
        "CI_MCP_BACKEND": backend,
        "AZURE_AI_PROJECT_ENDPOINT": emu.endpoint,
        "CI_MCP_AZURE_CA_BUNDLE": emu.ca_file,
        "CI_MCP_HTTP_TOKENS": f"agent:{TOKEN}",
        **emu.managed_identity_env(),
    }
    with cli_http_server(tmp_path, env) as served:
        async with client_for(served.url, TOKEN, read_timeout=120) as client:
            seen: list[str] = []
            got_progress = anyio.Event()

            async def on_progress(progress: float, total: float | None, message: str | None) -> None:
                seen.append(message or "")
                got_progress.set()

            first = await client.call_tool(
                "run_code_analysis", {"code": "x = 41\nprint(x + 1)"}, progress_callback=on_progress
            )
            assert "42" in all_text(first), all_text(first)
            assert seen, "no progress reached the HTTP client"
            session = session_of(first)

            got_progress = anyio.Event()
            async with anyio.create_task_group() as tg:

                async def long_run() -> None:
                    await client.call_tool(
                        "run_code_analysis",
                        {"code": "import time\nfor _ in range(900): time.sleep(0.1)", "session_id": session},
                        progress_callback=on_progress,
                    )

                tg.start_soon(long_run)
                with anyio.fail_after(60):
                    await got_progress.wait()
                tg.cancel_scope.cancel()
            # The cancelled step stopped on the (emulated) service: the session answers well before 90 s.
            with anyio.fail_after(60):
                after = await client.call_tool("run_code_analysis", {"code": "print(x)", "session_id": session})
            assert "41" in all_text(after), all_text(after)
