"""The warm call's shortcuts (issue 12) keep what they stand for, through the MCP client with real kernels: the
workspace walk a run reuses from the one before, and a session's use written in batches."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest
from mcp import Client
from mcp_types import CallToolResult

from ci_mcp.backends.local import cgroups
from ci_mcp.backends.local.state import LocalSessionState
from ci_mcp.sessions import SessionStore
from ci_mcp.settings import Settings
from tests.conftest import all_text, generated_ids, open_client, session_of, uploaded_id

pytestmark = pytest.mark.anyio


async def run(client: Client, code: str, **kw: object) -> CallToolResult:
    result = await client.call_tool("run_code_analysis", {"code": code, **kw})
    assert not result.is_error, all_text(result)
    return result


def workspace_of(settings: Settings, session_id: str) -> Path:
    records = SessionStore(settings.data_dir)
    try:
        return Path(records.get(session_id, LocalSessionState).state.workspace)
    finally:
        records.close()


async def test_files_of_earlier_runs_are_not_listed_again_and_changed_ones_are(
    make_settings: Callable[..., Settings],
) -> None:
    client, store = await open_client(make_settings())
    async with client:
        first = await run(client, "open('a.txt', 'w').write('a'); open('b.txt', 'w').write('b')")
        sid = session_of(first)
        assert set(generated_ids(first)) == {"a.txt", "b.txt"}
        quiet = await run(client, "print(1 + 1)", session_id=sid)
        assert generated_ids(quiet) == {}
        changed = await run(client, "open('b.txt', 'a').write('more'); open('c.txt', 'w').write('c')", session_id=sid)
        assert set(generated_ids(changed)) == {"b.txt", "c.txt"}
        again = await run(client, "print(2)", session_id=sid)
        assert generated_ids(again) == {}
    store.close()


async def test_an_input_file_placed_for_a_run_is_not_one_of_its_generated_files(
    make_settings: Callable[..., Settings], allowed: Path
) -> None:
    (allowed / "input.csv").write_text("x\n1\n")
    client, store = await open_client(make_settings())
    async with client:
        first = await run(client, "print('warm')")
        sid = session_of(first)
        await run(client, "print('still warm')", session_id=sid)
        file_id = uploaded_id(await client.call_tool("upload_file", {"path": str(allowed / "input.csv")}))
        placed = await run(client, "print(open('input.csv').read())", session_id=sid, file_ids=[file_id])
        assert "x\n1" in all_text(placed)
        assert generated_ids(placed) == {}
    store.close()


async def test_a_file_a_leftover_thread_writes_between_runs_is_not_the_next_runs_file_without_a_freezer(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where no cgroup freezes the kernel between runs (the host has none), a thread the code left running may write
    between runs: the next run walks the directory afresh, so such a file is the directory's state, not that run's
    output (as before the walk was reused where the kernel is frozen)."""
    monkeypatch.setattr(cgroups, "create", lambda *limits: None)
    settings = make_settings()
    client, store = await open_client(settings)
    async with client:
        code = (
            "import os, threading, time\n"
            "def later():\n"
            "    while not os.path.exists('go'):\n"
            "        time.sleep(0.01)\n"
            "    with open('late.tmp', 'w') as fh:\n"
            "        fh.write('late')\n"
            "    os.rename('late.tmp', 'late.txt')\n"
            "threading.Thread(target=later, daemon=True).start()\n"
        )
        first = await run(client, code)
        sid = session_of(first)
        ws = workspace_of(settings, sid)
        (ws / "go").write_text("")
        with anyio.fail_after(30):
            while not (ws / "late.txt").exists():
                await anyio.sleep(0.01)
        second = await run(
            client, "print(sorted(n for n in __import__('os').listdir('.') if n != 'go'))", session_id=sid
        )
        assert "late.txt" in all_text(second)
        assert generated_ids(second) == {}
    store.close()


async def test_a_sessions_last_use_is_in_its_record_once_the_server_has_closed(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings()
    client, store = await open_client(settings)
    async with client:
        sid = session_of(await run(client, "x = 1"))
        between = time.time()
        await run(client, "x += 1", session_id=sid)
    records = SessionStore(settings.data_dir)
    try:
        assert records.get(sid, LocalSessionState).last_used_at >= between
    finally:
        records.close()
    store.close()
