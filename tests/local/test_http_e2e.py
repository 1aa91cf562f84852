"""`ci-mcp serve --transport http`: the streamable HTTP transport for agent-to-agent use, on loopback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import anyio
import pytest
from mcp import Client

from tests.conftest import all_text, images, session_of

pytestmark = pytest.mark.anyio


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_an_agent_uses_the_tools_over_streamable_http(tmp_path: Path) -> None:
    port = free_port()
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(tmp_path),
        "CI_MCP_DATA_DIR": str(tmp_path / "data"),
        "CI_MCP_KERNEL_PRELOAD": "false",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "ci_mcp", "serve", "--transport", "http", "--port", str(port)],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "the HTTP server did not start listening"
                await anyio.sleep(0.05)
        async with Client(f"http://127.0.0.1:{port}/mcp") as client:
            first = await client.call_tool(
                "run_code_analysis", {"code": "import matplotlib.pyplot as plt\nplt.plot([1, 2])"}
            )
            assert len(images(first)) == 1
            again = await client.call_tool(
                "run_code_analysis", {"code": "print('same kernel')", "session_id": session_of(first)}
            )
            assert "same kernel" in all_text(again)
    finally:
        proc.terminate()
        proc.wait(timeout=20)
