"""Killing the server with SIGKILL mid-upload or mid-run loses nothing that completed and leaves nothing half-done."""

from __future__ import annotations

import hashlib
import os
import signal
import sqlite3
import sys
from pathlib import Path

import anyio
import pytest
from mcp import Client, StdioServerParameters

from ci_mcp.store import FileStore
from tests.conftest import REPO, all_text, generated_ids, seed_font_cache, uploaded_id

pytestmark = pytest.mark.anyio


def server_params(tmp_path: Path, work: Path) -> StdioServerParameters:
    env = {
        "PATH": os.environ.get("PATH", ""),
        "PYTHONPATH": str(REPO / "src"),  # the code under test, not whatever ci_mcp the interpreter has installed
        "HOME": str(tmp_path),
        "CI_MCP_DATA_DIR": str(seed_font_cache(tmp_path / "data")),
        "CI_MCP_ALLOWED_DIRS": str(work),
        "CI_MCP_KERNEL_PRELOAD": "false",
        "CI_MCP_MAX_UPLOAD_BYTES": str(2 * 1024**3),
    }
    pidfile = tmp_path / "server.pid"
    script = f'echo $$ > {pidfile}; exec "{sys.executable}" -m ci_mcp'
    return StdioServerParameters(command="/bin/sh", args=["-c", script], env=env, cwd=str(work))


async def wait_for(predicate, limit: float = 30.0) -> bool:
    """Whether `predicate()` came true within `limit` seconds (polled: it watches another process)."""
    with anyio.move_on_after(limit):
        while not predicate():
            await anyio.sleep(0.01)
        return True
    return False


def consistent_store(data: Path) -> list[tuple[str, str]]:
    """Every row has its blob with the recorded checksum; no blob without a row; nothing staged. Returns rows."""
    db = sqlite3.connect(data / "meta.sqlite3")
    rows = db.execute("SELECT file_id, name, sha256 FROM files").fetchall()
    db.close()
    blobs = {p.name for p in (data / "files").iterdir()}
    assert blobs == {r[0] for r in rows}
    for file_id, _, sha in rows:
        assert hashlib.sha256((data / "files" / file_id).read_bytes()).hexdigest() == sha
    return [(r[0], r[1]) for r in rows]


async def kill_during(client_call, tmp_path: Path, started, killed: list[str]) -> None:
    """Start `client_call` and SIGKILL the server once `started()` holds, noting the kill in `killed` first: the
    client then fails inside the task group, so the caller checks `killed` after swallowing that failure."""
    pid = int((tmp_path / "server.pid").read_text())
    async with anyio.create_task_group() as tg:
        tg.start_soon(client_call)
        if not await wait_for(started):
            tg.cancel_scope.cancel()
            return
        killed.append("killed")
        os.kill(pid, signal.SIGKILL)


async def test_sigkill_mid_upload_and_mid_run_loses_nothing_completed(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    (work / "small.csv").write_text("a,b\n1,2\n")
    big = work / "big.bin"
    with open(big, "wb") as fh:
        for _ in range(600):
            fh.write(os.urandom(1024 * 1024))
    params = server_params(tmp_path, work)
    data = tmp_path / "data"

    killed: list[str] = []
    # 1. Complete some work, then kill the server in the middle of a large upload.
    try:
        async with Client(params, read_timeout_seconds=60) as client:
            small_id = uploaded_id(await client.call_tool("upload_file", {"path": str(work / "small.csv")}))
            made = await client.call_tool("run_code_analysis", {"code": "open('done.txt', 'w').write('done')"})
            done_id = generated_ids(made)["done.txt"]

            async def upload_big() -> None:
                await client.call_tool("upload_file", {"path": str(big)})

            await kill_during(upload_big, tmp_path, lambda: any((data / "tmp").iterdir()), killed)
    except BaseException as exc:  # the client sees its server vanish; that is the point
        if isinstance(exc, AssertionError):
            raise
    assert killed, "the upload never started"
    rows = consistent_store(data)
    assert {small_id, done_id} <= {r[0] for r in rows}
    assert all(name != "big.bin" for _, name in rows)

    killed.clear()
    # 2. Restart, then kill the server in the middle of a run that is writing a file.
    try:
        async with Client(params, read_timeout_seconds=60) as client:
            listed = all_text(await client.call_tool("list_files", {}))
            assert small_id in listed and done_id in listed

            async def long_run() -> None:
                code = "import time\nopen('partial.txt', 'w').write('x' * 1000)\ntime.sleep(30)"
                await client.call_tool("run_code_analysis", {"code": code})

            workspaces = data / "workspaces"
            await kill_during(long_run, tmp_path, lambda: any(workspaces.glob("*/partial.txt")), killed)
    except BaseException as exc:
        if isinstance(exc, AssertionError):
            raise
    assert killed, "the run never started"
    consistent_store(data)

    # 3. After the second restart every completed file is intact and fetchable, and the store opens clean.
    async with Client(params, read_timeout_seconds=60) as client:
        fetched = await client.call_tool("fetch_generated_file", {"file_id": done_id})
        assert "done" in all_text(fetched)
        assert "a,b" in all_text(await client.call_tool("fetch_generated_file", {"file_id": small_id}))
    store = FileStore(data)
    assert list(store.tmp_dir.iterdir()) == []
    store.close()
