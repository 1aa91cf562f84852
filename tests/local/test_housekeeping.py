"""`ci-mcp files prune` and CI_MCP_FILE_RETENTION_DAYS, through the command line as an operator runs them."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from ci_mcp.backends.local.state import LocalSessionState
from ci_mcp.sessions import SessionStore
from ci_mcp.store import FileStore
from tests.conftest import REPO

DAY = 86400

pytestmark = pytest.mark.anyio


def ci_mcp(*args: str, data_dir: Path, **env: str) -> subprocess.CompletedProcess[str]:
    base = {
        "PATH": os.environ.get("PATH", ""),
        "PYTHONPATH": str(REPO / "src"),
        "HOME": str(data_dir.parent),
        "CI_MCP_DATA_DIR": str(data_dir),
    }
    return subprocess.run(
        [sys.executable, "-m", "ci_mcp", *args],
        env=base | env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@dataclass
class Stored:
    old_upload: str
    fresh_upload: str
    old_file_of_active_session: str
    old_file_of_closed_session: str
    closed_workspace: Path
    active_workspace: Path
    orphan_workspace: Path


def backdate(data_dir: Path, table: str, column: str, key: str, value: str, days: float) -> None:
    with sqlite3.connect(data_dir / "meta.sqlite3") as db:
        db.execute(f"UPDATE {table} SET {column} = ? WHERE {key} = ?", (time.time() - days * DAY, value))


def fill(data_dir: Path) -> Stored:
    """A store with files and sessions of different ages (made by the store itself, then backdated)."""
    store = FileStore(data_dir)
    old = store.put_bytes("old.csv", b"a,b\n1,2\n", origin="upload").file_id
    fresh = store.put_bytes("fresh.csv", b"x\n", origin="upload").file_id
    active_ws = store.workspaces_dir / "active"
    closed_ws = store.workspaces_dir / "closed"
    orphan_ws = store.workspaces_dir / "orphan"
    for ws in (active_ws, closed_ws, orphan_ws):
        ws.mkdir()
        (ws / "out.png").write_bytes(b"\x89PNG" + b"0" * 1000)
    records = SessionStore(data_dir)
    active = records.create("local", LocalSessionState(str(active_ws))).session_id
    closed = records.create("local", LocalSessionState(str(closed_ws))).session_id
    of_active = store.put_bytes("chart.png", b"\x89PNG", origin="generated", session_id=active).file_id
    of_closed = store.put_bytes("table.csv", b"t\n", origin="generated", session_id=closed).file_id
    records.update(closed, closed=True)
    records.close()
    store.close()
    for fid in (old, of_active, of_closed):
        backdate(data_dir, "files", "created_at", "file_id", fid, days=40)
    backdate(data_dir, "sessions", "last_used_at", "session_id", closed, days=40)
    old_time = time.time() - 40 * DAY
    os.utime(orphan_ws, (old_time, old_time))
    return Stored(old, fresh, of_active, of_closed, closed_ws, active_ws, orphan_ws)


def file_ids(data_dir: Path) -> set[str]:
    store = FileStore(data_dir)
    try:
        return {f.file_id for f in store.list()}
    finally:
        store.close()


def test_prune_removes_old_files_and_finished_workspaces_and_keeps_what_is_in_use(tmp_path: Path) -> None:
    data = tmp_path / "data"
    s = fill(data)

    done = ci_mcp("files", "prune", "--older-than", "30", data_dir=data)

    assert done.returncode == 0, done.stderr
    assert "removed 2 file(s)" in done.stdout and "2 session workspace(s)" in done.stdout, done.stdout
    assert file_ids(data) == {s.fresh_upload, s.old_file_of_active_session}
    for fid in (s.old_upload, s.old_file_of_closed_session):  # blob and row go together
        assert not (data / "files" / fid).exists()
    assert (data / "files" / s.fresh_upload).exists()
    assert not s.closed_workspace.exists() and not s.orphan_workspace.exists()
    assert (s.active_workspace / "out.png").exists()


def test_prune_dry_run_lists_what_it_would_remove_and_removes_nothing(tmp_path: Path) -> None:
    data = tmp_path / "data"
    s = fill(data)
    before = file_ids(data)

    done = ci_mcp("files", "prune", "--older-than", "30", "--dry-run", data_dir=data)

    assert done.returncode == 0, done.stderr
    assert "would remove 2 file(s)" in done.stdout
    assert s.old_upload in done.stdout and str(s.closed_workspace) in done.stdout
    assert file_ids(data) == before
    assert s.closed_workspace.exists() and s.orphan_workspace.exists()


def test_prune_takes_its_age_from_the_retention_setting(tmp_path: Path) -> None:
    data = tmp_path / "data"
    s = fill(data)

    kept = ci_mcp("files", "prune", data_dir=data, CI_MCP_FILE_RETENTION_DAYS="60")
    assert kept.returncode == 0 and "removed 0 file(s)" in kept.stdout, kept.stdout + kept.stderr

    done = ci_mcp("files", "prune", data_dir=data, CI_MCP_FILE_RETENTION_DAYS="30")
    assert done.returncode == 0, done.stderr
    assert s.old_upload not in file_ids(data)


def test_prune_without_an_age_says_which_flag_or_setting_to_give(tmp_path: Path) -> None:
    done = ci_mcp("files", "prune", data_dir=tmp_path / "data")
    assert done.returncode == 2
    assert "--older-than DAYS" in done.stderr and "CI_MCP_FILE_RETENTION_DAYS" in done.stderr


async def test_a_server_started_with_a_retention_setting_prunes_before_serving(tmp_path: Path) -> None:
    from mcp import Client, StdioServerParameters

    from tests.conftest import all_text

    data = tmp_path / "data"
    s = fill(data)
    env = {
        "PATH": os.environ.get("PATH", ""),
        "PYTHONPATH": str(REPO / "src"),
        "HOME": str(tmp_path),
        "CI_MCP_DATA_DIR": str(data),
        "CI_MCP_FILE_RETENTION_DAYS": "30",
        "CI_MCP_KERNEL_POOL_SIZE": "0",
    }
    params = StdioServerParameters(command=sys.executable, args=["-m", "ci_mcp"], env=env, cwd=str(tmp_path))
    async with Client(params) as client:
        listing = all_text(await client.call_tool("list_files", {}))
    assert s.fresh_upload in listing and s.old_file_of_active_session in listing
    assert s.old_upload not in listing and s.old_file_of_closed_session not in listing
