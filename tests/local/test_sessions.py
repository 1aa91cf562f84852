"""Sessions over time: a server restart, idle shutdown, closing, capacity."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest
from mcp import Client

from ci_mcp.backends.local.backend import LocalBackend
from ci_mcp.backends.local.kernel import Kernel
from ci_mcp.backends.local.state import LocalSessionState
from ci_mcp.models import RunRequest, TextOutput, no_progress
from ci_mcp.server import create_server
from ci_mcp.sessions import SessionStore
from ci_mcp.settings import Settings
from ci_mcp.store import FileStore
from tests.conftest import all_text, generated_ids, open_client, session_of

pytestmark = pytest.mark.anyio


@pytest.mark.usefixtures("each_walk")
async def test_a_server_restart_keeps_files_and_says_kernel_state_was_lost(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings()
    first, store = await open_client(settings)
    async with first:
        made = await first.call_tool("run_code_analysis", {"code": "x = 1\nopen('keep.txt', 'w').write('kept')"})
        sid = session_of(made)
        fid = generated_ids(made)["keep.txt"]
    store.close()

    second, store = await open_client(settings)
    async with second:
        fetched = await second.call_tool("fetch_generated_file", {"file_id": fid})
        assert "kept" in all_text(fetched)
        again = await second.call_tool(
            "run_code_analysis", {"code": "print(open('keep.txt').read(), 'x' in globals())", "session_id": sid}
        )
        text = all_text(again)
        assert session_of(again) == sid
        assert "kept False" in text
        assert "variables and imports from earlier calls are gone" in text
    store.close()


async def test_the_session_records_are_closed_with_the_server(make_settings: Callable[..., Settings]) -> None:
    """The backend's connection to the session records ends with the server's lifespan, not whenever the garbage
    collector gets to it (the records themselves stay on disk for the next start)."""
    settings = make_settings()
    store = FileStore(settings.data_dir)
    backend = LocalBackend(settings, store)
    async with Client(create_server(backend, store, settings)) as client:
        sid = session_of(await client.call_tool("run_code_analysis", {"code": "1"}))
        assert backend.records.get(sid, LocalSessionState).session_id == sid
    with pytest.raises(sqlite3.ProgrammingError):
        backend.records.get(sid, LocalSessionState)
    records = SessionStore(settings.data_dir)
    assert records.get(sid, LocalSessionState).session_id == sid
    records.close()
    store.close()


async def test_an_idle_session_is_shut_down_and_keeps_its_files(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(idle_session_seconds=0.3, kernel_pool_size=0)
    store = FileStore(settings.data_dir)
    backend = LocalBackend(settings, store)
    await backend.start()
    try:
        result = await backend.run(RunRequest(None, "open('a.txt', 'w').write('a')", None), no_progress)
        sid = result.session_id
        with anyio.fail_after(60):  # a bound against hanging, not a measurement: the reaper's own clock decides
            while sid in backend._live:
                await anyio.sleep(0.05)
        again = await backend.run(RunRequest(sid, "print(open('a.txt').read())", None), no_progress)
        assert any(isinstance(o, TextOutput) and o.text == "a\n" for o in again.outputs)
        assert any("was not running" in n for n in again.notices)
    finally:
        await backend.aclose()
        store.close()


async def test_the_idlest_session_is_stopped_when_the_session_limit_is_reached(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(max_sessions=2, kernel_pool_size=0)
    store = FileStore(settings.data_dir)
    backend = LocalBackend(settings, store)
    await backend.start()
    try:
        ids = [(await backend.run(RunRequest(None, f"v = {i}", None), no_progress)).session_id for i in range(3)]
        assert len(backend._live) == 2 and ids[0] not in backend._live
        revived = await backend.run(RunRequest(ids[0], "print('v' in globals())", None), no_progress)
        assert any(isinstance(o, TextOutput) and "False" in o.text for o in revived.outputs)
    finally:
        await backend.aclose()
        store.close()


@pytest.mark.usefixtures("each_walk")
async def test_close_session_frees_the_kernel_and_keeps_files(make_settings: Callable[..., Settings]) -> None:
    client, store = await open_client(make_settings())
    async with client:
        made = await client.call_tool("run_code_analysis", {"code": "open('f.txt', 'w').write('f')"})
        sid = session_of(made)
        closed = await client.call_tool("close_session", {"session_id": sid})
        assert not closed.is_error
        listed = await client.call_tool("list_files", {"session_id": sid})
        assert "f.txt" in all_text(listed)
    store.close()


def test_a_blob_without_metadata_is_removed_and_rows_without_blobs_are_dropped(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    kept = store.put_bytes("kept.csv", b"a,b\n", origin="upload")
    (store.files_dir / "file-orphan").write_bytes(b"half")  # a crash after the rename, before the row
    (store.tmp_dir / "partial").write_bytes(b"half")  # a crash mid-write
    lost = store.put_bytes("lost.csv", b"c\n", origin="upload")
    (store.files_dir / lost.file_id).unlink()
    store.close()

    reopened = FileStore(tmp_path)
    assert [f.file_id for f in reopened.list()] == [kept.file_id]
    assert reopened.read(kept.file_id) == b"a,b\n"
    assert not (reopened.files_dir / "file-orphan").exists()
    assert list(reopened.tmp_dir.iterdir()) == []
    reopened.close()


async def test_calls_on_one_session_are_serialised_and_sessions_run_in_parallel(
    make_settings: Callable[..., Settings],
) -> None:
    client, store = await open_client(make_settings(kernel_pool_size=2))
    async with client:
        sid_a = session_of(await client.call_tool("run_code_analysis", {"code": "n = 0"}))
        sid_b = session_of(await client.call_tool("run_code_analysis", {"code": "n = 0"}))
        results: dict[str, str] = {}

        async def call(key: str, sid: str, code: str) -> None:
            results[key] = all_text(await client.call_tool("run_code_analysis", {"code": code, "session_id": sid}))

        # a1 holds session a until the test lets it go, which it does only once b has finished: were sessions run
        # one at a time, b would wait for a1 and the bound below would fail.
        workspace_a = Path(SessionStore(store.data_dir).get(sid_a, LocalSessionState).state.workspace)
        hold = (
            "import os, time\nopen('a1-running', 'w').close()\n"
            "while not os.path.exists('a1-go'):\n    time.sleep(0.01)\nn += 1\nprint('a1', n)"
        )
        with anyio.fail_after(60):  # a bound, not a measurement: the broken build waits here
            async with anyio.create_task_group() as tg:
                tg.start_soon(call, "a1", sid_a, hold)
                while not (workspace_a / "a1-running").exists():
                    await anyio.sleep(0.02)
                tg.start_soon(call, "a2", sid_a, "n += 10\nprint('a2', n)")
                await call("b", sid_b, "print('b done')")
                assert "a1" not in results and "a2" not in results  # a2 waits for a1, a1 for the test
                (workspace_a / "a1-go").touch()
    store.close()
    assert "a1 1" in results["a1"] and "a2 11" in results["a2"]  # a2 waited for a1 and saw its state
    assert "a2 11" not in results["a1"] and "a1 1" not in results["a2"]  # outputs not mixed up
    assert "b done" in results["b"]


def gate_kernel_starts(backend: LocalBackend, monkeypatch: pytest.MonkeyPatch) -> tuple[anyio.Event, anyio.Event]:
    """From now on every kernel start sets `entered` and waits until the test sets `gate`."""
    entered, gate = anyio.Event(), anyio.Event()
    start_kernel = backend._start_kernel

    async def gated_start(ws: Path) -> Kernel:
        entered.set()
        await gate.wait()
        return await start_kernel(ws)

    monkeypatch.setattr(backend, "_start_kernel", gated_start)
    return entered, gate


@pytest.mark.parametrize("cold", ["new session", "revived session"])
async def test_a_warm_call_never_waits_for_another_sessions_kernel_start(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch, cold: str
) -> None:
    settings = make_settings(kernel_pool_size=0)
    store = FileStore(settings.data_dir)
    backend = LocalBackend(settings, store)
    async with Client(create_server(backend, store, settings)) as client:
        warm_sid = session_of(await client.call_tool("run_code_analysis", {"code": "n = 41"}))
        args: dict[str, str] = {"code": "print('cold ran')"}
        if cold == "revived session":
            idle = session_of(await client.call_tool("run_code_analysis", {"code": "pass"}))
            await backend._stop_live(backend._live[idle])  # as the idle reaper does: the next call revives it
            args["session_id"] = idle

        # From here on every kernel start waits at a gate the test opens only after the warm call has finished.
        entered, gate = gate_kernel_starts(backend, monkeypatch)
        cold_result: list[str] = []

        async def cold_call() -> None:
            cold_result.append(all_text(await client.call_tool("run_code_analysis", args)))

        try:
            with anyio.fail_after(30):  # a bound, not a measurement: the broken build waits here forever
                async with anyio.create_task_group() as tg:
                    tg.start_soon(cold_call)
                    await entered.wait()
                    warm = await client.call_tool(
                        "run_code_analysis", {"code": "n += 1\nprint(n)", "session_id": warm_sid}
                    )
                    assert "42" in all_text(warm), all_text(warm)
                    assert not cold_result  # the cold start is still held at the gate
                    gate.set()
        finally:
            gate.set()
    store.close()
    assert "cold ran" in cold_result[0], cold_result


async def test_a_session_whose_kernel_is_starting_counts_against_the_session_limit(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = make_settings(kernel_pool_size=0, max_sessions=1)
    store = FileStore(settings.data_dir)
    backend = LocalBackend(settings, store)
    entered, gate = gate_kernel_starts(backend, monkeypatch)
    async with Client(create_server(backend, store, settings)) as client:
        first: list[str] = []

        async def first_call() -> None:
            first.append(all_text(await client.call_tool("run_code_analysis", {"code": "print('first ran')"})))

        try:
            with anyio.fail_after(30):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(first_call)
                    await entered.wait()
                    second = await client.call_tool("run_code_analysis", {"code": "print('second ran')"})
                    assert second.is_error and "sessions are busy" in all_text(second), all_text(second)
                    gate.set()
        finally:
            gate.set()
    store.close()
    assert "first ran" in first[0], first
