"""src/ci_mcp/sessions.py: session records with each backend's typed state, the one rule for continuing a session,
and records that survive reopening the data directory."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from ci_mcp.backends.azure.agents.backend import SessionState
from ci_mcp.backends.azure.classic.backend import ThreadState
from ci_mcp.backends.local.state import LocalSessionState
from ci_mcp.errors import NotFoundError
from ci_mcp.sessions import NoState, SessionStore, session_info
from ci_mcp.store import FileStore


@pytest.fixture
def sessions(tmp_path: Path) -> Iterator[SessionStore]:
    s = SessionStore(tmp_path / "data")
    yield s
    s.close()


def test_sessions_are_recorded_updated_and_closed(sessions: SessionStore) -> None:
    rec = sessions.create("local", LocalSessionState("/w"))
    assert sessions.get(rec.session_id, LocalSessionState) == rec and rec.session_id.startswith("sess-")
    sessions.update(rec.session_id, state=LocalSessionState("/v"), closed=True)
    updated = sessions.get(rec.session_id, LocalSessionState)
    assert updated.state == LocalSessionState("/v") and updated.closed and updated.last_used_at >= rec.last_used_at
    assert [s.session_id for s in sessions.list(NoState, "local")] == [rec.session_id]
    assert sessions.list(NoState, "azure") == []
    with pytest.raises(NotFoundError, match="looks like a file id"):
        sessions.get("file-0", NoState)


def test_a_session_is_continued_only_on_its_backend_and_only_while_open(sessions: SessionStore) -> None:
    rec = sessions.create("azure-classic", ThreadState("thread_1"))
    assert sessions.open(rec.session_id, "azure-classic", ThreadState).state.thread_id == "thread_1"
    with pytest.raises(NotFoundError, match="belongs to the azure-classic backend, not local"):
        sessions.open(rec.session_id, "local", LocalSessionState)
    sessions.update(rec.session_id, closed=True)
    with pytest.raises(NotFoundError, match="was closed"):
        sessions.open(rec.session_id, "azure-classic", ThreadState)
    assert sessions.open(rec.session_id, "azure-classic", ThreadState, allow_closed=True).closed


def test_each_backends_state_round_trips_and_survives_reopening(tmp_path: Path) -> None:
    first = SessionStore(tmp_path / "data")
    conversation = SessionState("conv_1", "cntr_1", ["file-a", "file-b"], {"cfile_1": 42})
    ids = {
        "azure": first.create("azure", conversation).session_id,
        "local": first.create("local", LocalSessionState("/ws")).session_id,
        "azure-classic": first.create("azure-classic", ThreadState("thread_9")).session_id,
    }
    first.close()

    again = SessionStore(tmp_path / "data")
    try:
        assert again.get(ids["azure"], SessionState).state == conversation
        assert again.get(ids["local"], LocalSessionState).state.workspace == "/ws"
        assert again.get(ids["azure-classic"], ThreadState).state.thread_id == "thread_9"
    finally:
        again.close()


def test_a_damaged_or_older_state_reads_as_the_defaults(tmp_path: Path) -> None:
    sessions = SessionStore(tmp_path / "data")
    rec = sessions.create("azure", SessionState())
    with sqlite3.connect(tmp_path / "data" / "meta.sqlite3") as db:
        db.execute("UPDATE sessions SET state = ? WHERE session_id = ?", ("not json", rec.session_id))
    try:
        assert sessions.get(rec.session_id, SessionState).state == SessionState()
        with sqlite3.connect(tmp_path / "data" / "meta.sqlite3") as db:
            odd = json.dumps({"conversation_id": 7, "files": "nope", "seen": []})
            db.execute("UPDATE sessions SET state = ? WHERE session_id = ?", (odd, rec.session_id))
        assert sessions.get(rec.session_id, SessionState).state == SessionState()
    finally:
        sessions.close()


def test_session_info_lists_the_files_its_runs_generated(sessions: SessionStore, tmp_path: Path) -> None:
    files = FileStore(tmp_path / "data")
    try:
        rec = sessions.create("local", LocalSessionState("/w"))
        made = files.put_bytes("out.txt", b"x", origin="generated", session_id=rec.session_id)
        files.put_bytes("in.txt", b"y", origin="upload")
        info = session_info(rec, True, files)
        assert (info.session_id, info.live, info.file_ids) == (rec.session_id, True, (made.file_id,))
    finally:
        files.close()
