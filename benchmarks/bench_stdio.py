"""Latency of the local backend through a real stdio MCP client (the way Claude Desktop talks to ci-mcp).

    python benchmarks/bench_stdio.py [--quick] [--against OTHER/src] [--pool N]       (or: make bench)

Measures spawn + initialize (with tools/list answered) and the first tool call after it, the first call of a new
session, ten new sessions back to back, a warm `print(1+1)`, a tool call that needs no kernel (the MCP round trip
over stdio), and a pandas + matplotlib bar chart of a 10,000-row frame with its image block (first in a session, and
warm). The server is this checkout's `src` (or `--src`). With `--against`, a second tree (e.g. the base commit, `git
archive` into /tmp) is measured in the same run, its server up beside this one and every call alternating between
them, so that a shared machine's load falls on both alike. Each server keeps its own default pool of spare kernels
unless `--pool` sets CI_MCP_KERNEL_POOL_SIZE for all. Prints a table and rewrites the
"Local backend over stdio" section of benchmarks/RESULTS.md. Targets are from issue 12.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, TypeVar

import anyio
from anyio.streams.buffered import BufferedByteReceiveStream
from mcp import Client, StdioServerParameters
from mcp_types import ImageContent, TextContent

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "RESULTS.md"
MARK = "<!-- local-stdio-{mode}:{edge} -->"

CHART = """
import numpy as np, pandas as pd, matplotlib.pyplot as plt
df = pd.DataFrame({"group": np.arange(10_000) % 12, "value": np.random.default_rng(0).normal(size=10_000)})
df.groupby("group")["value"].sum().plot.bar()
"""

TARGETS: dict[str, float | None] = {
    "spawn + initialize + tools/list": 300,
    "spawn + first tool call": None,  # (list_files, right after tools/list: the server itself must be up)
    "first call, new session": 50,
    "new session, 10 back to back": 50,
    "warm print(1+1)": 3,
    "chart + image block, first": 150,
    "chart + image block, warm": 80,
    # No target: the MCP round trip itself (stdio transport, dispatch, one SQLite lookup, an error result), no kernel.
    "tool call without a kernel": None,
    # No target: the same warm call from a client of a few lines (RawClient), no MCP SDK on the client's side.
    "warm print(1+1), raw JSON-RPC client": None,
}
BURST = 10
T = TypeVar("T")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def sid_of(result: object) -> str:
    first = result.content[0]  # type: ignore[attr-defined]
    assert isinstance(first, TextContent), first
    return first.text.split()[1]


def sid_of_raw(result: dict[str, Any]) -> str:
    """`sid_of` for a raw `tools/call` result (JSON)."""
    return str(result["content"][0]["text"].split()[1])


def descendants(pid: int) -> list[int]:
    found, stack = [], [pid]
    while stack:
        current = stack.pop()
        for task in Path(f"/proc/{current}/task").glob("*"):
            try:
                kids = [int(p) for p in (task / "children").read_text().split()]
            except OSError:
                continue
            found.extend(kids)
            stack.extend(kids)
    return found


def pss_mb(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


def server_params(sandbox: str, src: Path, pool: int | None) -> tuple[StdioServerParameters, Path]:
    data = Path(tempfile.mkdtemp(prefix="ci-mcp-bench-"))
    env = dict(
        os.environ,
        CI_MCP_DATA_DIR=str(data),
        CI_MCP_SANDBOX=sandbox,
        PYTHONPATH=str(src),  # the tree under test, not whatever ci_mcp the interpreter has installed
    )
    env.pop("CI_MCP_KERNEL_POOL_SIZE", None)
    if pool is not None:  # else each tree's own default
        env["CI_MCP_KERNEL_POOL_SIZE"] = str(pool)
    pidfile = data / "server.pid"
    script = f'echo $$ > {pidfile}; exec "{sys.executable}" -m ci_mcp'
    return StdioServerParameters(command="/bin/sh", args=["-c", script], env=env), pidfile


async def timed(out: list[float], call: Awaitable[T]) -> T:
    t0 = time.perf_counter()
    result = await call
    out.append((time.perf_counter() - t0) * 1000)
    return result


class RawClient:
    """A JSON-RPC client of a few lines on the server's stdin and stdout (initialize, then `tools/call` lines, each
    answer read up to its newline): what the server itself adds to a call, without an MCP SDK's client-side
    validation and dispatch."""

    def __init__(self, params: StdioServerParameters) -> None:
        self.params = params
        self.last_id = 0

    async def __aenter__(self) -> RawClient:
        command = [self.params.command, *self.params.args]
        self.process = await anyio.open_process(command, env=self.params.env, stderr=subprocess.DEVNULL)
        assert self.process.stdout is not None
        self.output = BufferedByteReceiveStream(self.process.stdout)
        client = {"name": "bench-raw", "version": "1"}
        await self.request("initialize", {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": client})
        await self.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.process.stdin is not None
        await self.process.stdin.aclose()
        with anyio.fail_after(30):
            await self.process.wait()

    async def send(self, message: dict[str, object]) -> None:
        assert self.process.stdin is not None
        await self.process.stdin.send(json.dumps(message).encode() + b"\n")

    async def request(self, method: str, params: dict[str, object]) -> dict[str, Any]:
        self.last_id += 1
        await self.send({"jsonrpc": "2.0", "id": self.last_id, "method": method, "params": params})
        while True:
            message = json.loads(await self.output.receive_until(b"\n", 64 * 1024 * 1024))
            if message.get("id") == self.last_id and "method" not in message:
                result: dict[str, Any] = message["result"]
                return result

    async def call_tool(self, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
        return await self.request("tools/call", {"name": name, "arguments": arguments})


def is_kernel(pid: int) -> bool:
    """A kernel process: kernel_launcher run by bwrap (not bwrap itself), or a kernel forked by the zygote (pid 1
    of its own pid namespace; the zygote and the forks that wait for each kernel are not)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_text().split("\0")
        nspid = next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith("NSpid"))
    except (OSError, StopIteration):
        return False
    command = " ".join(argv)
    if "zygote_process" in command:
        return nspid.split()[-1] == "1"
    return "kernel_launcher" in command and "bwrap" not in argv[0]


def server_rss_mb(pidfile: Path) -> float:
    """Resident memory of the server process itself (not its kernels)."""
    for line in Path(f"/proc/{int(pidfile.read_text())}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def kernel_memory(pidfile: Path) -> float:
    """PSS of the server's process tree per kernel (a session, numpy, pandas and matplotlib preloaded, next to
    the pool's spare; with the zygote, its share is spread over the kernels)."""
    server = int(pidfile.read_text())
    kernels = [p for p in descendants(server) if is_kernel(p)]
    return pss_mb(descendants(server)) / max(1, len(kernels))


def turns(items: list[T], n: int) -> list[list[T]]:
    """`n` rounds over `items`, each round in the other order: whoever goes second in a round shares the machine
    with the first one's aftermath (its kernel's post-run work), so a fixed order would favour the first tree."""
    return [items if i % 2 == 0 else items[::-1] for i in range(n)]


async def warm_calls(
    pairs: list[tuple[Client, dict[str, list[float]]]], sids: list[str], raws: list[RawClient], quick: bool
) -> None:
    """Warm print(1+1) (from the SDK client and from the raw one), the tool call without a kernel, and the warm
    chart, alternating between the servers."""
    triples = [(client, out, sid) for (client, out), sid in zip(pairs, sids, strict=True)]
    for round_ in turns(triples, 50 if quick else 300):
        for client, out, sid in round_:
            args = {"code": "print(1+1)", "session_id": sid}
            await timed(out["warm print(1+1)"], client.call_tool("run_code_analysis", args))
    raw_sids = [sid_of_raw(await raw.call_tool("run_code_analysis", {"code": "1"})) for raw in raws]
    outs = [out for _, out in pairs]
    for raw_round in turns(list(zip(raws, outs, raw_sids, strict=True)), 50 if quick else 300):
        for raw, out, sid in raw_round:
            args = {"code": "print(1+1)", "session_id": sid}
            result = await timed(out["warm print(1+1), raw JSON-RPC client"], raw.call_tool("run_code_analysis", args))
            assert not result.get("isError"), result
    for round_ in turns(triples, 50 if quick else 300):
        for client, out, _ in round_:
            args = {"session_id": "sess-unknown"}
            await timed(out["tool call without a kernel"], client.call_tool("close_session", args))
    for round_ in turns(triples, 5 if quick else 30):
        for client, out, sid in round_:
            args = {"code": CHART, "session_id": sid}
            chart = await timed(out["chart + image block, warm"], client.call_tool("run_code_analysis", args))
            assert any(isinstance(b, ImageContent) for b in chart.content)


async def measure(
    quick: bool, sandbox: str, trees: list[Path], pool: int | None
) -> list[tuple[dict[str, list[float]], float, float]]:
    """Every tree's server measured in the same run: spawns alternate, and all servers stay up side by side while
    each call alternates between them (in turns, see `turns`), so that the shared machine's load falls on all alike."""
    servers = [server_params(sandbox, src, pool) for src in trees]
    outs: list[dict[str, list[float]]] = [{k: [] for k in TARGETS} for _ in trees]
    for spawns in turns(list(zip(servers, outs, strict=True)), 3 if quick else 10):
        for (params, _), out in spawns:
            t0 = time.perf_counter()
            async with Client(params) as client:
                await client.list_tools()
                out["spawn + initialize + tools/list"].append((time.perf_counter() - t0) * 1000)
                await client.call_tool("list_files", {})
                out["spawn + first tool call"].append((time.perf_counter() - t0) * 1000)

    async with contextlib.AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(Client(params)) for params, _ in servers]
        pairs = list(zip(clients, outs, strict=True))
        await anyio.sleep(5)  # let the pools pre-start their kernels
        idle_rss = [server_rss_mb(pidfile) for _, pidfile in servers]
        for calls in turns(pairs, 3 if quick else 10):
            for client, out in calls:
                result = await timed(
                    out["first call, new session"], client.call_tool("run_code_analysis", {"code": "1"})
                )
                sid = sid_of(result)
                args = {"code": CHART, "session_id": sid}
                chart = await timed(out["chart + image block, first"], client.call_tool("run_code_analysis", args))
                assert any(isinstance(b, ImageContent) for b in chart.content), chart
                await client.call_tool("close_session", {"session_id": sid})
            await anyio.sleep(2.5)  # the pools refill in the background; a real user thinks between calls
        # A client opening sessions as fast as it can (e.g. parallel agents): no pause for the pool to refill.
        # One server's burst at a time, in two halves each, so that no burst shares the machine with another's.
        for _ in range(2):
            for client, out in pairs:
                for _ in range(BURST // 2):
                    args = {"code": "1"}
                    result = await timed(
                        out["new session, 10 back to back"], client.call_tool("run_code_analysis", args)
                    )
                    await client.call_tool("close_session", {"session_id": sid_of(result)})
                await anyio.sleep(4)
        sids = [sid_of(await client.call_tool("run_code_analysis", {"code": "1"})) for client in clients]
        for _ in range(20):
            for client, sid in zip(clients, sids, strict=True):
                await client.call_tool("run_code_analysis", {"code": "print(1+1)", "session_id": sid})
        raws = [await stack.enter_async_context(RawClient(params)) for params, _ in servers]
        await warm_calls(pairs, sids, raws, quick)
        for client, sid in zip(clients, sids, strict=True):
            await client.call_tool("close_session", {"session_id": sid})
            await client.call_tool("run_code_analysis", {"code": "1"})
        await anyio.sleep(4)
        memory = [kernel_memory(pidfile) for _, pidfile in servers]
    return list(zip(outs, memory, idle_rss, strict=True))


def table(results: list[tuple[dict[str, list[float]], float, float]], labels: list[str]) -> str:
    head = "| measure | n |" + "".join(f" {label} p50 | {label} mean | {label} p95 |" for label in labels)
    rows = [head + " target p50 | met |", "|---|---|" + "---|---|---|" * len(labels) + "---|---|"]
    for name, target in TARGETS.items():
        cells, p50 = "", 0.0
        for values, _, _ in results:
            got = values[name]
            p50 = statistics.median(got)
            cells += f" {p50:.1f} | {statistics.mean(got):.1f} | {pct(got, 0.95):.1f} |"
        n = len(results[-1][0][name])
        if target is None:
            rows.append(f"| {name} | {n} |{cells} - | - |")
        else:
            rows.append(f"| {name} | {n} |{cells} <= {target} | {'yes' if p50 <= target else 'no'} |")
    memory = ", ".join(f"{label} {m:.0f} MB" for label, (_, m, _) in zip(labels, results, strict=True))
    rss = ", ".join(f"{label} {r:.0f} MB" for label, (_, _, r) in zip(labels, results, strict=True))
    rows.append(
        "\nTimes in ms; spawn + initialize is 10 starts on one data directory, the first without a start cache. "
        f"Idle server RSS (the server process alone, its pool's kernel started; target <= 80 MB): {rss}. "
        f"Idle kernel (a session or the pool's spare; PSS of its process tree): {memory}."
    )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--sandbox", choices=["auto", "bwrap", "none"], default="auto")
    parser.add_argument("--src", type=Path, default=HERE.parent / "src", help="the tree to measure")
    parser.add_argument("--against", type=Path, help="another tree's src to measure in the same run (before)")
    parser.add_argument("--pool", type=int, help="CI_MCP_KERNEL_POOL_SIZE for every server (default: each tree's own)")
    args = parser.parse_args()
    trees = [args.against, args.src] if args.against else [args.src]
    labels = ["before", "after"] if args.against else ["this"]
    load_before = os.getloadavg()
    results = anyio.run(measure, args.quick, args.sandbox, trees, args.pool)
    load_after = os.getloadavg()
    text = table(results, labels)
    load = f"load average {load_before[0]:.1f} at the start, {load_after[0]:.1f} at the end"
    print(text)
    print(load)
    if args.no_write:
        return
    compared, against = "", f" --against {args.against}" if args.against else ""
    against += f" --pool {args.pool}" if args.pool is not None else ""
    if args.against:
        compared = f" (before: `{args.against}`, after: `{args.src}`, both servers up side by side, calls alternating)"
    begin, end = MARK.format(mode=args.sandbox, edge="begin"), MARK.format(mode=args.sandbox, edge="end")
    section = (
        f"{begin}\n## Local backend over stdio, CI_MCP_SANDBOX={args.sandbox}\n\n"
        f"`python benchmarks/bench_stdio.py --sandbox {args.sandbox}{against}` on {platform.machine()}, "
        f"{os.cpu_count()} "
        f"cores, Python {platform.python_version()}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
        f"{compared}; {load} (a shared machine: compare columns of one run, not runs).\n\n{text}\n{end}"
    )
    current = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    if begin in current:
        head, rest = current.split(begin, 1)
        current = head + section + rest.split(end, 1)[1]
    else:
        current = current.rstrip() + "\n\n" + section + "\n"
    RESULTS.write_text(current)


if __name__ == "__main__":
    main()
