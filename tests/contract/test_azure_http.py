"""The Azure backends served over streamable HTTP with a token, as a real `ci-mcp serve` subprocess against the
emulator: progress reaches the HTTP client, and cancelling a call stops the remote run so the session goes on."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import anyio
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from tests.azure_emulator.server import Emulator
from tests.azure_emulator.state import Faults, default_model
from tests.conftest import all_text, session_of

pytestmark = pytest.mark.anyio

TOKEN = "agent-token-0123456789abcdef"
REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("backend", ["azure", "azure-classic"])
async def test_progress_and_cancellation_reach_the_azure_backends_over_http(
    contract_emulator: Emulator, tmp_path: Path, backend: str
) -> None:
    emu = contract_emulator
    emu.state.model = default_model
    emu.state.faults = Faults()
    assert emu.ca_file is not None
    port = free_port()
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(tmp_path),
        "PYTHONPATH": str(REPO / "src"),
        "CI_MCP_BACKEND": backend,
        "AZURE_AI_PROJECT_ENDPOINT": emu.endpoint,
        "CI_MCP_AZURE_CA_BUNDLE": emu.ca_file,
        "CI_MCP_DATA_DIR": str(tmp_path / "data"),
        "CI_MCP_HTTP_TOKENS": f"agent:{TOKEN}",
        **emu.managed_identity_env(),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "ci_mcp", "serve", "--transport", "http", "--port", str(port)],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stderr is not None
        assert b"serving MCP at" in proc.stderr.readline()
        http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {TOKEN}"}, timeout=httpx2.Timeout(120))
        async with http, Client(streamable_http_client(f"http://127.0.0.1:{port}/mcp", http_client=http)) as client:
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
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        if proc.stderr is not None:
            proc.stderr.close()
