"""Warm `run_code_analysis` over streamable HTTP with 1, 4 and 16 concurrent clients, each on its own session.

    python benchmarks/bench_http.py [--seconds 10] [--clients 1 4 16]

Starts `ci-mcp serve --transport http` with a bearer token (the local backend, sandbox as detected), opens N
authenticated MCP clients, gives each a session (the cold start is not measured), then has every client call
`print(1+1)` in its session back to back for the given time. Reports requests per second, p50/p95 latency, and the
memory of the server process and of all its kernels (PSS), and rewrites the "Local backend over HTTP" section of
benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anyio
import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp_types import TextContent

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "RESULTS.md"
BEGIN, END = "<!-- local-http:begin -->", "<!-- local-http:end -->"
TOKEN = "bench-token-0123456789abcdef"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pss_mb(pid: int) -> float:
    """PSS of a process and all its descendants, in MB (Linux)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        todo.extend(children.get(current, []))
        try:
            for line in Path(f"/proc/{current}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def run_level(url: str, clients: int, seconds: float) -> tuple[list[float], float]:
    latencies: list[float] = []
    headers = {"Authorization": f"Bearer {TOKEN}"}
    ready = anyio.Event()
    started = anyio.Event()
    opened = 0
    elapsed = 0.0

    async def one() -> None:
        nonlocal opened
        http = httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(120))
        async with http, Client(streamable_http_client(url, http_client=http)) as client:
            first = await client.call_tool("run_code_analysis", {"code": "x = 1"})
            text = next(b.text for b in first.content if isinstance(b, TextContent))
            session = text.split()[1]
            opened += 1
            if opened == clients:
                ready.set()
            await started.wait()
            stop = time.perf_counter() + seconds
            while time.perf_counter() < stop:
                t0 = time.perf_counter()
                result = await client.call_tool("run_code_analysis", {"code": "print(1+1)", "session_id": session})
                latencies.append((time.perf_counter() - t0) * 1000)
                assert not result.is_error

    async with anyio.create_task_group() as tg:
        for _ in range(clients):
            tg.start_soon(one)
        await ready.wait()
        t0 = time.perf_counter()
        started.set()
    elapsed = time.perf_counter() - t0
    return latencies, len(latencies) / elapsed


async def main(seconds: float, levels: list[int]) -> None:
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(
            os.environ,
            CI_MCP_DATA_DIR=str(Path(tmp) / "data"),
            CI_MCP_HTTP_TOKENS=TOKEN,
            CI_MCP_MAX_SESSIONS=str(max(levels) + 1),
            CI_MCP_MAX_SESSIONS_PER_PRINCIPAL=str(sum(levels) + 1),
            CI_MCP_KERNEL_POOL_SIZE="1",
        )
        proc = subprocess.Popen(
            [sys.executable, "-m", "ci_mcp", "serve", "--transport", "http", "--port", str(port)],
            env=env,
            stderr=subprocess.PIPE,
        )
        try:
            assert proc.stderr is not None
            line = proc.stderr.readline().decode()
            assert "serving MCP at" in line, line
            url = f"http://127.0.0.1:{port}/mcp"
            idle_rss = rss_mb(proc.pid)
            rows = []
            for clients in levels:
                latencies, rps = await run_level(url, clients, seconds)
                latencies.sort()
                p95 = latencies[int(len(latencies) * 0.95) - 1]
                rows.append(
                    (
                        clients,
                        len(latencies),
                        rps,
                        statistics.median(latencies),
                        p95,
                        rss_mb(proc.pid),
                        pss_mb(proc.pid),
                    )
                )
        finally:
            proc.terminate()
            proc.wait(timeout=30)
            if proc.stderr is not None:
                proc.stderr.close()
    table = [
        "| clients (sessions) | calls | calls/s | p50 ms | p95 ms | server RSS MB | server + kernels PSS MB |",
        "|---|---|---|---|---|---|---|",
        *(
            f"| {c} | {n} | {r:.0f} | {p50:.1f} | {p95:.1f} | {rss:.0f} | {pss:.0f} |"
            for c, n, r, p50, p95, rss, pss in rows
        ),
    ]
    when = time.strftime("%Y-%m-%d")
    section = "\n".join(
        [
            BEGIN,
            "## Local backend over HTTP (warm `print(1+1)`, concurrent clients)",
            "",
            f"`python benchmarks/bench_http.py --seconds {seconds:g}` on {platform.machine()}, {os.cpu_count()} cores, "
            f"Python {platform.python_version()}, {when}. Bearer-token auth, one session per client, each client "
            f"calling back to back. Idle server RSS before the runs: {idle_rss:.0f} MB. The memory columns are read "
            "after each level, with every session so far still alive.",
            "",
            *table,
            END,
        ]
    )
    print(section)
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    if BEGIN in text:
        text = text.split(BEGIN)[0] + section + text.split(END, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    RESULTS.write_text(text)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    args = parser.parse_args()
    anyio.run(main, args.seconds, args.clients)
