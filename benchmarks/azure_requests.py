"""Requests and latency of one warm `azure` run, against the seed-style flow of the Azure samples.

Runs against the local emulator (tests/azure_emulator) with the real SDKs, so request *counts* are exact and
latencies show client-side overhead plus the simulated round trip (`--rtt`, default 50 ms per request). The code
that the scripted agent runs is the same in every flow: read a CSV, save one PNG chart.

Flows measured, per run:
- seed-style: what the 2024-2025 samples do for every question (reference/azure-api.md §A.5): upload the file,
  create an agent version, create a conversation, one blocking response, download the cited file, delete all three.
- ci-mcp cold: `AzureAgentsBackend.run` in a new session (the agent version is already known to the process).
- ci-mcp warm: `AzureAgentsBackend.run` in an existing session (files uploaded, conversation open).
- raw floor: one streamed `responses.create` in an existing conversation, with nothing else (no downloads).

Usage: .venv/bin/python benchmarks/azure_requests.py [--runs 5] [--rtt 0.05] [--append benchmarks/RESULTS.md]
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from azure.ai.projects import AIProjectClient  # noqa: E402
from azure.ai.projects.models import (  # noqa: E402
    AutoCodeInterpreterToolParam,
    CodeInterpreterTool,
    PromptAgentDefinition,
)
from openai import DefaultHttpxClient  # noqa: E402

from ci_mcp.backends.azure.agents.backend import AzureAgentsBackend  # noqa: E402
from ci_mcp.files import files_for  # noqa: E402
from ci_mcp.models import RunRequest  # noqa: E402
from ci_mcp.settings import Settings  # noqa: E402
from ci_mcp.store import FileStore  # noqa: E402
from tests.azure_emulator.server import Emulator  # noqa: E402

CSV = b"city,sales\nPune,3\nDelhi,5\nMumbai,8\n"
CODE = (
    "import pandas as pd, matplotlib.pyplot as plt\n"
    "df = pd.read_csv('/mnt/data/sales.csv')\n"
    "df.plot.bar(x='city', y='sales')\n"
    "plt.savefig('/mnt/data/chart.png')\n"
)
MESSAGE = "Run exactly this code:\n```python\n" + CODE + "```"


async def _noop(progress: float, total: float | None, message: str) -> None:
    return None


def seed_style_run(emu: Emulator, agent: str) -> int:
    """The sample flow, synchronous SDKs as in the samples; returns the number of PNG bytes downloaded."""
    project = AIProjectClient(emu.endpoint, emu.credential(), connection_verify=emu.ca_file, retry_total=0)
    client = project.get_openai_client(http_client=DefaultHttpxClient(verify=emu.ssl_context()), max_retries=0)
    try:
        uploaded = client.files.create(purpose="assistants", file=("sales.csv", CSV))
        version = project.agents.create_version(
            agent,
            definition=PromptAgentDefinition(
                model="gpt-4.1",
                instructions="You are a data analyst.",
                tools=[CodeInterpreterTool(container=AutoCodeInterpreterToolParam(file_ids=[uploaded.id]))],
            ),
        )
        conversation = client.conversations.create()
        response = client.responses.create(
            conversation=conversation.id,
            input=MESSAGE,
            extra_body={"agent_reference": {"name": agent, "version": version.version, "type": "agent_reference"}},
        )
        size = 0
        for item in response.output:
            if item.type != "message":
                continue
            for part in item.content:
                for ann in getattr(part, "annotations", []) or []:
                    if ann.type == "container_file_citation":
                        size += len(
                            client.containers.files.content.retrieve(ann.file_id, container_id=ann.container_id).read()
                        )
        client.files.delete(uploaded.id)
        client.conversations.delete(conversation.id)
        project.agents.delete_version(agent, version.version)
        return size
    finally:
        client.close()
        project.close()


def raw_floor_run(agent: str, conversation: str, remote_file: str, client: object) -> None:
    stream = client.responses.create(  # type: ignore[attr-defined]
        conversation=conversation,
        input=MESSAGE,
        stream=True,
        extra_body={
            "agent_reference": {"name": agent, "type": "agent_reference"},
            "structured_inputs": {"file_1": remote_file},
        },
    )
    for _ in stream:
        pass


async def measure(
    label: str, runs: int, emu: Emulator, fn: Callable[[], Awaitable[object]]
) -> tuple[str, float, float]:
    counts: list[int] = []
    times: list[float] = []
    for _ in range(runs):
        mark = emu.state.mark()
        t0 = time.perf_counter()
        await fn()
        times.append(time.perf_counter() - t0)
        counts.append(len(emu.state.requests_since(mark)))
    return label, statistics.median(counts), statistics.median(times)


async def main(runs: int, rtt: float) -> list[tuple[str, float, float]]:
    tmp = Path(tempfile.mkdtemp(prefix="azure-bench-"))
    async with Emulator(tmp / "emu") as emu:
        settings = Settings(backend="azure", data_dir=tmp / "data", azure_endpoint=emu.endpoint)
        store = FileStore(settings.data_dir)
        backend = AzureAgentsBackend(settings, store, credential=emu.credential(), ca_file=emu.ca_file)
        await backend.start()
        csv = await files_for(backend, store, settings.max_upload_bytes).upload("sales.csv", CSV)
        warmup = await backend.run(RunRequest(None, CODE, None, (csv.file_id,)), _noop)  # agent version, kernel
        emu.state.request_latency_seconds = rtt
        results = []
        results.append(
            await measure(
                "seed-style (per question)", runs, emu, lambda: asyncio.to_thread(seed_style_run, emu, "seed")
            )
        )

        async def cold() -> None:
            await backend.run(RunRequest(None, CODE, None, (csv.file_id,)), _noop)

        async def warm() -> None:
            await backend.run(RunRequest(warmup.session_id, CODE, None), _noop)

        results.append(await measure("ci-mcp cold (new session)", runs, emu, cold))
        results.append(await measure("ci-mcp warm (same session)", runs, emu, warm))

        project = AIProjectClient(emu.endpoint, emu.credential(), connection_verify=emu.ca_file, retry_total=0)
        client = project.get_openai_client(http_client=DefaultHttpxClient(verify=emu.ssl_context()), max_retries=0)
        agent = settings.azure_agent_name
        conversation = client.conversations.create().id
        remote_file = backend._remote.get(csv.file_id, csv.sha256) or ""
        await asyncio.to_thread(raw_floor_run, agent, conversation, remote_file, client)
        results.append(
            await measure(
                "raw floor (1 streamed response)",
                runs,
                emu,
                lambda: asyncio.to_thread(raw_floor_run, agent, conversation, remote_file, client),
            )
        )
        client.close()
        project.close()
        await backend.aclose()
        store.close()
    return results


def report(results: list[tuple[str, float, float]], runs: int, rtt: float) -> str:
    floor = results[-1][2]
    lines = [
        "## Azure backend",
        "",
        f"`benchmarks/azure_requests.py --runs {runs} --rtt {rtt}` on {platform.system()} "
        f"{platform.machine()}, Python {platform.python_version()}, {time.strftime('%Y-%m-%d')}. Emulator on "
        f"127.0.0.1 (TLS) with {rtt * 1000:.0f} ms added per request; the agent's code (read a CSV, save one PNG) "
        "runs in a real local kernel. Medians over the runs.",
        "",
        "| flow | requests per run | latency per run (s) | over the raw floor (s) |",
        "|---|---|---|---|",
    ]
    for label, count, seconds in results:
        lines.append(f"| {label} | {count:g} | {seconds:.3f} | {seconds - floor:+.3f} |")
    lines += [
        "",
        "A warm run is 1 streamed POST /responses + 1 container file listing + 1 GET per generated file. The seed "
        "flow pays upload, agent version, conversation and three deletes on every question, and its fresh "
        "container starts a new kernel each time (on Azure: a new billed code-interpreter session). The raw floor "
        "downloads nothing, so the warm run's extra time is its listing and one download (2 round trips) plus "
        "storing the PNG; a cold run's extra second is mostly the emulator starting a kernel for the new container.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--rtt", type=float, default=0.05)
    parser.add_argument("--append", type=Path, default=None, help="append the section to this markdown file")
    args = parser.parse_args()
    text = report(asyncio.run(main(args.runs, args.rtt)), args.runs, args.rtt)
    print(text)
    if args.append:
        with args.append.open("a") as fh:
            fh.write(("\n" if args.append.exists() and args.append.stat().st_size else "") + text)
