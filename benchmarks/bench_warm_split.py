"""Where a warm `print(1+1)` spends its time, inside one server process (issue 12).

    python benchmarks/bench_warm_split.py [--rounds N] [--sandbox bwrap|none]

Builds the local backend and the MCP server over it (the tests' in-memory client, no stdio), opens one session and
measures, alternating in each round: `Kernel.execute` (the kernel round trip, with the session cgroup's thaw and
freeze), `LocalBackend.run` (plus the workspace, outputs and session record), `run_code_analysis` through the MCP
client (plus the tool layer, rendering and the SDK's dispatch), and a tool call that needs no kernel. Prints p50s in
ms. Run it with another tree's `src` first on PYTHONPATH to compare; the stdio round trip is bench_stdio.py's.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Literal

import anyio
from mcp import Client

from ci_mcp.backends.factory import create_backend
from ci_mcp.backends.local.backend import LocalBackend
from ci_mcp.backends.local.kernel import KernelEvent
from ci_mcp.models import RunRequest, no_progress
from ci_mcp.server import create_server
from ci_mcp.settings import Settings
from ci_mcp.store import FileStore

CODE = "print(1+1)"


async def _ignore(event: KernelEvent) -> None:
    return None


async def measure(rounds: int, sandbox: Literal["bwrap", "none"]) -> dict[str, list[float]]:
    with tempfile.TemporaryDirectory(prefix="ci-mcp-split-") as data:
        settings = Settings(data_dir=Path(data), sandbox=sandbox, kernel_pool_size=0)
        store = FileStore(settings.data_dir)
        backend = create_backend(settings, store)
        assert isinstance(backend, LocalBackend)
        times: dict[str, list[float]] = {
            "Kernel.execute": [],
            "LocalBackend.run": [],
            "run_code_analysis (in-memory MCP)": [],
            "tool call without a kernel": [],
        }
        try:
            async with Client(create_server(backend, store, settings)) as client:
                first = await backend.run(RunRequest(None, CODE, None), no_progress)
                sid = first.session_id
                kernel = backend._live[sid].kernel

                async def execute() -> object:
                    return await kernel.execute(CODE, deadline=time.monotonic() + 30, sink=_ignore)

                async def run() -> object:
                    return await backend.run(RunRequest(sid, CODE, None), no_progress)

                async def call() -> object:
                    return await client.call_tool("run_code_analysis", {"code": CODE, "session_id": sid})

                async def bare() -> object:
                    return await client.call_tool("close_session", {"session_id": "sess-000000000000000000000000"})

                Step = Callable[[], Awaitable[object]]
                steps: dict[str, Step] = dict(zip(times, (execute, run, call, bare), strict=True))
                for _ in range(rounds):
                    for name, step in steps.items():
                        started = time.perf_counter()
                        await step()
                        times[name].append((time.perf_counter() - started) * 1000)
        finally:
            store.close()
        return times


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=150)
    parser.add_argument("--sandbox", choices=["bwrap", "none"], default="bwrap")
    args = parser.parse_args()
    times = anyio.run(measure, args.rounds, args.sandbox)
    for name, values in times.items():
        print(f"{name}: p50 {statistics.median(values):.2f} ms, mean {statistics.fmean(values):.2f} ms")


if __name__ == "__main__":
    main()
