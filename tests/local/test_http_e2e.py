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
        if proc.stderr is not None:
            proc.stderr.close()


@pytest.mark.parametrize("example", ["agent_delegation.py", "openai_agents_delegation.py"])
async def test_the_delegation_examples_work_against_a_server_with_a_token(tmp_path: Path, example: str) -> None:
    if example.startswith("openai"):
        pytest.importorskip("agents.mcp", reason="openai-agents is a dev dependency")
    repo = Path(__file__).resolve().parents[2]
    port = free_port()
    token = "agent-token-0123456789abcdef"
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(tmp_path),
        "PYTHONPATH": str(repo / "src"),
        "CI_MCP_DATA_DIR": str(tmp_path / "data"),
        "CI_MCP_KERNEL_PRELOAD": "false",
        "CI_MCP_HTTP_TOKENS": f"agent:{token}",
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
        client_env = {
            "PATH": env["PATH"],
            "HOME": str(tmp_path),
            "PYTHONPATH": env["PYTHONPATH"],
            "CI_MCP_URL": f"http://127.0.0.1:{port}/mcp",
            "CI_MCP_TOKEN": token,
            "CI_MCP_EXAMPLE_OUT": str(tmp_path / "out"),
        }
        done = await anyio.to_thread.run_sync(
            lambda: subprocess.run(
                [sys.executable, str(repo / "examples" / example)],
                env=client_env,
                capture_output=True,
                text=True,
                timeout=180,
            )
        )
        assert done.returncode == 0, done.stdout + done.stderr
        if example == "agent_delegation.py":
            chart = tmp_path / "out" / "sectors_by_operating_profit.png"
            assert chart.read_bytes().startswith(b"\x89PNG")
            assert "TRANSPORTATION" in done.stdout or "sector" in done.stdout
        else:
            assert "run_code_analysis" in done.stdout and "(501, " in done.stdout, done.stdout
        wrong = await anyio.to_thread.run_sync(
            lambda: subprocess.run(
                [sys.executable, str(repo / "examples" / example)],
                env={**client_env, "CI_MCP_TOKEN": "wrong-token-0123456789abcdef"},
                capture_output=True,
                text=True,
                timeout=120,
            )
        )
        assert wrong.returncode != 0
        assert not (tmp_path / "out" / "never").exists()
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        if proc.stderr is not None:
            proc.stderr.close()
