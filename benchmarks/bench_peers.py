"""ci-mcp beside the fastest peer, in the same run, through the same real stdio MCP client (issue 12).

    python benchmarks/bench_peers.py [--quick] [--no-write]

The peer is yzfly/mcp-python-interpreter (PyPI `mcp-python-interpreter`), the in-process interpreter on the 1.x SDK
that benchmarks/RESULTS.md's issue named the best peer on start: it runs code inside its own server process (no
kernel, no isolation), so its warm call is the floor an unsandboxed design reaches. It is installed, with the 1.x SDK
it is written for and bytecode compiled (as `pip` installs by default), into build/peers/ on the first run.

Both servers are spawned alternately on a fresh data directory each (ci-mcp's first start has no start cache, later
starts do, as a user's second start would), then both stay up while warm `print(1+1)` calls alternate between them
in turns, so the shared machine's load falls on both alike. The handshake is the 2025 one (`initialize`) for both,
which the 1.x peer speaks. Prints a table and rewrites the "Peers over stdio" section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anyio
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp_types import TextContent

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "RESULTS.md"
MARK = "<!-- peers-stdio:{edge} -->"
PEER = "mcp-python-interpreter"
PEER_PINS = ("mcp-python-interpreter==1.2.3", "mcp==1.30.0")
PEER_VENV = HERE.parent / "build" / "peers" / PEER


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def peer_command() -> Path:
    """The peer's console script, installed into its own venv on the first run."""
    script = PEER_VENV / "bin" / PEER
    if not script.exists():
        subprocess.run([sys.executable, "-m", "venv", str(PEER_VENV)], check=True)
        pip = [str(PEER_VENV / "bin" / "python"), "-m", "pip", "install", "--quiet", "--compile"]
        subprocess.run([*pip, *PEER_PINS], check=True)
    return script


def ci_mcp_params() -> StdioServerParameters:
    data = Path(tempfile.mkdtemp(prefix="ci-mcp-bench-"))
    env = dict(os.environ, CI_MCP_DATA_DIR=str(data), PYTHONPATH=str(HERE.parent / "src"))
    return StdioServerParameters(command=sys.executable, args=["-m", "ci_mcp"], env=env)


def peer_params(script: Path) -> StdioServerParameters:
    work = Path(tempfile.mkdtemp(prefix="peer-bench-"))
    return StdioServerParameters(command=str(script), args=["--dir", str(work)], env=dict(os.environ), cwd=str(work))


class Server:
    """One server under test: how to start it and how it runs `print(1+1)` warm in one session."""

    def __init__(self, label: str, params: StdioServerParameters, tool: str, session_arg: str) -> None:
        self.label, self.params, self.tool, self.session_arg = label, params, tool, session_arg
        self.spawn: list[float] = []
        self.warm: list[float] = []

    def client(self) -> Client:
        return Client(stdio_client(self.params, errlog=open(os.devnull, "w")), mode="legacy")  # noqa: SIM115

    async def first_session(self, client: Client) -> str:
        ours = self.tool == "run_code_analysis"
        arguments = {"code": "print(1+1)"} if ours else {"code": "x = 1", "session_id": "bench"}
        result = await client.call_tool(self.tool, arguments)
        first = result.content[0]
        assert isinstance(first, TextContent), result
        if ours:
            return first.text.split()[1]  # ci-mcp: "session_id: <id>" leads the result
        return "bench"  # the peer's inline mode keeps a session's state under the id it is given

    async def print_call(self, client: Client, session: str) -> None:
        t0 = time.perf_counter()
        result = await client.call_tool(self.tool, {"code": "print(1+1)", self.session_arg: session})
        self.warm.append((time.perf_counter() - t0) * 1000)
        assert not result.is_error and any(isinstance(b, TextContent) and "2" in b.text for b in result.content)


async def measure(servers: list[Server], quick: bool) -> None:
    for round_ in range(3 if quick else 10):
        for server in servers if round_ % 2 == 0 else servers[::-1]:
            t0 = time.perf_counter()
            async with server.client() as client:
                await client.list_tools()
                server.spawn.append((time.perf_counter() - t0) * 1000)
    async with contextlib.AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(server.client()) for server in servers]
        sessions = [await server.first_session(c) for server, c in zip(servers, clients, strict=True)]
        for _ in range(20):  # warm both up
            for server, client, session in zip(servers, clients, sessions, strict=True):
                await server.print_call(client, session)
        for server in servers:
            server.warm.clear()
        for round_ in range(50 if quick else 300):
            trio = list(zip(servers, clients, sessions, strict=True))
            for server, client, session in trio if round_ % 2 == 0 else trio[::-1]:
                await server.print_call(client, session)


def table(servers: list[Server]) -> str:
    rows = ["| measure | n |" + "".join(f" {s.label} p50 | {s.label} mean | {s.label} p95 |" for s in servers)]
    rows.append("|---|---|" + "---|---|---|" * len(servers))
    for name, attr in (("spawn + initialize + tools/list", "spawn"), ("warm print(1+1)", "warm")):
        cells = ""
        for server in servers:
            got: list[float] = getattr(server, attr)
            cells += f" {statistics.median(got):.1f} | {statistics.mean(got):.1f} | {pct(got, 0.95):.1f} |"
        rows.append(f"| {name} | {len(getattr(servers[0], attr))} |{cells}")
    rows.append(
        "\nTimes in ms, one real stdio client (the 2025 `initialize` handshake for both). ci-mcp: sandbox auto (bwrap, "
        f"kernels forked from the zygote), its defaults. {PEER}: `run_python_code` in its default inline mode (the "
        "code runs inside the server process: no kernel, no sandbox, no time limit)."
    )
    return "\n".join(rows)


def record(text: str, header: str) -> None:
    begin, end = MARK.format(edge="begin"), MARK.format(edge="end")
    block = f"{begin}\n## Peers over stdio, same run\n\n{header}\n\n{text}\n{end}"
    content = RESULTS.read_text()
    if begin in content:
        before, rest = content.split(begin, 1)
        content = before + block + rest.split(end, 1)[1]
    else:
        content = content.rstrip("\n") + "\n\n" + block + "\n"
    RESULTS.write_text(content)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    script = peer_command()
    servers = [
        Server("ci-mcp", ci_mcp_params(), "run_code_analysis", "session_id"),
        Server(PEER, peer_params(script), "run_python_code", "session_id"),
    ]
    load = os.getloadavg()[0]
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    anyio.run(measure, servers, args.quick)
    text = table(servers)
    print(text)
    header = (
        f"`python benchmarks/bench_peers.py` on {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, {started}; {PEER} {PEER_PINS[0].split('==')[1]} on mcp "
        f"{PEER_PINS[1].split('==')[1]}; load average {load:.1f} at the start, {os.getloadavg()[0]:.1f} at the end "
        "(a shared machine: compare the columns of one run)."
    )
    if not args.no_write and not args.quick:
        record(text, header)


if __name__ == "__main__":
    main()
