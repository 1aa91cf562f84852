"""Latency of the local backend through a real stdio MCP client (the way Claude Desktop talks to ci-mcp).

    python benchmarks/bench_stdio.py [--quick]       (or: make bench)

Measures spawn + initialize, the first call of a new session, a warm `print(1+1)`, and a pandas + matplotlib bar
chart of a 10,000-row frame with its image block (first in a session, and warm). Prints a table and rewrites the
"Local backend over stdio" section of benchmarks/RESULTS.md. Targets are from the foundation issue.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import anyio
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

TARGETS = {
    "spawn + initialize": 400,
    "first call, new session": 100,
    "warm print(1+1)": 4,
    "chart + image block, first": 700,
    "chart + image block, warm": 150,
}


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def sid_of(result: object) -> str:
    first = result.content[0]  # type: ignore[attr-defined]
    assert isinstance(first, TextContent), first
    return first.text.split()[1]


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


async def measure(quick: bool, sandbox: str) -> tuple[dict[str, list[float]], float]:
    data = Path(tempfile.mkdtemp(prefix="ci-mcp-bench-"))
    env = dict(os.environ, CI_MCP_DATA_DIR=str(data), CI_MCP_KERNEL_POOL_SIZE="1", CI_MCP_SANDBOX=sandbox)
    pidfile = data / "server.pid"
    script = f'echo $$ > {pidfile}; exec "{sys.executable}" -m ci_mcp'
    params = StdioServerParameters(command="/bin/sh", args=["-c", script], env=env)
    out: dict[str, list[float]] = {k: [] for k in TARGETS}
    for _ in range(3 if quick else 10):
        t0 = time.perf_counter()
        async with Client(params) as client:
            out["spawn + initialize"].append((time.perf_counter() - t0) * 1000)
            await client.list_tools()

    async with Client(params) as client:
        await anyio.sleep(3)  # let the pool pre-start its kernel
        for _ in range(3 if quick else 10):
            t0 = time.perf_counter()
            result = await client.call_tool("run_code_analysis", {"code": "1"})
            out["first call, new session"].append((time.perf_counter() - t0) * 1000)
            sid = sid_of(result)
            t0 = time.perf_counter()
            chart = await client.call_tool("run_code_analysis", {"code": CHART, "session_id": sid})
            out["chart + image block, first"].append((time.perf_counter() - t0) * 1000)
            assert any(isinstance(b, ImageContent) for b in chart.content), chart
            await client.call_tool("close_session", {"session_id": sid})
            await anyio.sleep(2.5)  # the pool refills in the background; a real user thinks between calls
        sid = sid_of(await client.call_tool("run_code_analysis", {"code": "1"}))
        for _ in range(20):
            await client.call_tool("run_code_analysis", {"code": "print(1+1)", "session_id": sid})
        for _ in range(50 if quick else 300):
            t0 = time.perf_counter()
            await client.call_tool("run_code_analysis", {"code": "print(1+1)", "session_id": sid})
            out["warm print(1+1)"].append((time.perf_counter() - t0) * 1000)
        for _ in range(5 if quick else 30):
            t0 = time.perf_counter()
            chart = await client.call_tool("run_code_analysis", {"code": CHART, "session_id": sid})
            out["chart + image block, warm"].append((time.perf_counter() - t0) * 1000)
            assert any(isinstance(b, ImageContent) for b in chart.content)
        # Idle memory of a kernel: a fresh session (numpy, pandas and matplotlib preloaded) next to the pool's spare.
        await client.call_tool("close_session", {"session_id": sid})
        await client.call_tool("run_code_analysis", {"code": "1"})
        await anyio.sleep(3)
        server = int(pidfile.read_text())
        kernels = [p for p in descendants(server) if "kernel_launcher" in Path(f"/proc/{p}/cmdline").read_text()]
        kernels = [p for p in kernels if "bwrap" not in Path(f"/proc/{p}/cmdline").read_text().split("\0")[0]]
        memory = pss_mb(descendants(server)) / max(1, len(kernels))
    return out, memory


def table(out: dict[str, list[float]], memory: float) -> str:
    rows = ["| measure | n | p50 ms | p95 ms | target p50 ms | met |", "|---|---|---|---|---|---|"]
    for name, target in TARGETS.items():
        values = out[name]
        p50, p95 = statistics.median(values), pct(values, 0.95)
        rows.append(
            f"| {name} | {len(values)} | {p50:.1f} | {p95:.1f} | <= {target} | {'yes' if p50 <= target else 'no'} |"
        )
    rows.append(f"\nIdle kernel (a session or the pool's spare; PSS of its process tree): {memory:.0f} MB.")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--sandbox", choices=["auto", "bwrap", "none"], default="auto")
    args = parser.parse_args()
    out, memory = anyio.run(measure, args.quick, args.sandbox)
    text = table(out, memory)
    print(text)
    if args.no_write:
        return
    begin, end = MARK.format(mode=args.sandbox, edge="begin"), MARK.format(mode=args.sandbox, edge="end")
    section = (
        f"{begin}\n## Local backend over stdio, CI_MCP_SANDBOX={args.sandbox}\n\n"
        f"`python benchmarks/bench_stdio.py --sandbox {args.sandbox}` on {platform.machine()}, {os.cpu_count()} "
        f"cores, Python {platform.python_version()}, {time.strftime('%Y-%m-%d')}.\n\n{text}\n{end}"
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
