"""Shared by the HTTP tests: a free loopback port, `ci-mcp serve --transport http` as a real subprocess, and an MCP
client that sends a bearer token."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from tests.conftest import seed_font_cache

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Served:
    url: str
    start_line: str
    """What the server printed first on stderr (its URL and auth mode), once it listens."""
    port: int


@contextmanager
def cli_http_server(home: Path, env: dict[str, str] | None = None) -> Iterator[Served]:
    """`python -m ci_mcp serve --transport http` on a free port, with a clean environment (`home` as HOME, its
    `data` as the data directory, the code under test on PYTHONPATH) plus `env`; yields once it listens."""
    port = free_port()
    environment = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(home),
        "PYTHONPATH": str(REPO / "src"),
        "CI_MCP_DATA_DIR": str(seed_font_cache(home / "data")),
        "CI_MCP_KERNEL_PRELOAD": "false",
        "CI_MCP_KERNEL_POOL_SIZE": "0",  # kernels start when a session wants one: none idle in the background
        **(env or {}),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "ci_mcp", "serve", "--transport", "http", "--port", str(port)],
        env=environment,
        cwd=home,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        first = proc.stderr.readline()  # printed once the server listens (or the reason it stopped)
        assert "serving MCP at" in first, first + proc.stderr.read()
        yield Served(f"http://127.0.0.1:{port}/mcp", first, port)
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        if proc.stderr is not None:
            proc.stderr.close()


@asynccontextmanager
async def client_for(url: str, token: str | None, read_timeout: float = 60) -> AsyncIterator[Client]:
    """An MCP client over streamable HTTP, sending `Authorization: Bearer <token>` when a token is given."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    http = httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(read_timeout))
    async with http, Client(streamable_http_client(url, http_client=http)) as client:
        yield client
