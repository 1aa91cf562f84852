"""Session records: which backend a session belongs to, when it was made and last used, whether it was closed, and
the backend's own state for it, a typed record per backend (`BackendState`) kept as JSON.

The records live in the `sessions` table of `<data_dir>/meta.sqlite3` (the file store's database, on a connection
of their own), so a restarted server still knows every session. Each backend owns its `SessionStore`: sessions are
the backend's, files the server's (`store.py`, `files.py`). Continuing a session follows one rule for every backend
(`SessionStore.open`).
"""

from __future__ import annotations

import builtins
import json
import secrets
import sqlite3
import time
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Generic, Protocol, Self, TypeVar

from ci_mcp.errors import NotFoundError
from ci_mcp.models import SessionInfo
from ci_mcp.store import FileStore, disk_errors

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    session_id TEXT PRIMARY KEY,
    backend TEXT NOT NULL,
    created_at REAL NOT NULL,
    last_used_at REAL NOT NULL,
    state TEXT NOT NULL DEFAULT '{}',
    closed INTEGER NOT NULL DEFAULT 0
);
"""


class BackendState(Protocol):
    """A backend's state for one session: loaded from, and dumped to, its JSON object."""

    @classmethod
    def load(cls, raw: Mapping[str, object]) -> Self:
        """Read what `dump` wrote (or an older or damaged version of it: a missing or odd field gets its default)."""
        ...

    def dump(self) -> dict[str, object]: ...


S = TypeVar("S", bound=BackendState)


class TextState:
    """A state of text fields only, for a frozen dataclass that subclasses this: each field loads as the text stored,
    or empty where it is missing or not text, and dumps as it is."""

    @classmethod
    def load(cls, raw: Mapping[str, object]) -> Self:
        stored = {f.name: raw.get(f.name) for f in fields(cls)}  # type: ignore[arg-type]
        return cls(**{name: value if isinstance(value, str) else "" for name, value in stored.items()})

    def dump(self) -> dict[str, object]:
        return {f.name: getattr(self, f.name) for f in fields(self)}  # type: ignore[arg-type]


@dataclass(frozen=True)
class NoState(TextState):
    """For readers that use no backend's state (housekeeping's view of every session)."""


@dataclass(frozen=True)
class SessionRecord(Generic[S]):
    session_id: str
    backend: str
    created_at: float
    last_used_at: float
    state: S
    closed: bool


def new_session_id() -> str:
    return "sess-" + secrets.token_hex(12)


def no_such_session(session_id: str) -> NotFoundError:
    """The one answer for a session id that is unknown, or not the caller's."""
    hint = " That looks like a file id; pass it in file_ids." if session_id.startswith("file-") else ""
    return NotFoundError(f"No session with id '{session_id}'.{hint} Omit session_id to start a new session.")


class SessionStore:
    """The session records of a data directory. Methods are synchronous and quick; call them from any thread."""

    def __init__(self, data_dir: Path) -> None:
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.data_dir = data_dir
        self._db = sqlite3.connect(data_dir / "meta.sqlite3", check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    def create(self, backend: str, state: S) -> SessionRecord[S]:
        now = time.time()
        record = SessionRecord(new_session_id(), backend, now, now, state, False)
        with disk_errors(self.data_dir, "no new session could be recorded"):
            self._db.execute(
                "INSERT INTO sessions VALUES (?, ?, ?, ?, ?, 0)",
                (record.session_id, backend, now, now, json.dumps(state.dump())),
            )
        return record

    def get(self, session_id: str, kind: type[S]) -> SessionRecord[S]:
        """The record of any backend's session; unknown ids are not found."""
        row = self._db.execute("SELECT * FROM sessions WHERE session_id = ?", (session_id,)).fetchone()
        if row is None:
            raise no_such_session(session_id)
        return _record(row, kind)

    def open(self, session_id: str, backend: str, kind: type[S], *, allow_closed: bool = False) -> SessionRecord[S]:
        """The session a call continues, by the one rule every backend keeps: unknown ids are not found, a
        session of another backend cannot be continued here, and a closed session is over (its files stay)."""
        record = self.get(session_id, kind)
        if record.backend != backend:
            raise NotFoundError(
                f"Session '{session_id}' belongs to the {record.backend} backend, not {backend}. Omit session_id to "
                "start a new session."
            )
        if record.closed and not allow_closed:
            raise NotFoundError(
                f"Session '{session_id}' was closed: its kernel and variables are gone, its files stay fetchable "
                "(list_files shows them; pass their ids in file_ids). Omit session_id to start a new session."
            )
        return record

    def update(self, session_id: str, *, state: BackendState | None = None, closed: bool | None = None) -> None:
        """Mark the session used now; with `state`, keep that state; with `closed`, open or close it."""
        now = time.time()
        with disk_errors(self.data_dir, f"session {session_id} could not be updated"):
            if state is not None:
                self._db.execute(
                    "UPDATE sessions SET state = ?, last_used_at = ? WHERE session_id = ?",
                    (json.dumps(state.dump()), now, session_id),
                )
            else:
                self._db.execute("UPDATE sessions SET last_used_at = ? WHERE session_id = ?", (now, session_id))
            if closed is not None:
                self._db.execute("UPDATE sessions SET closed = ? WHERE session_id = ?", (int(closed), session_id))

    def list(self, kind: type[S], backend: str | None = None) -> builtins.list[SessionRecord[S]]:
        """Every session (of `backend`, when given), oldest first."""
        rows = self._db.execute("SELECT * FROM sessions ORDER BY created_at").fetchall()
        return [_record(r, kind) for r in rows if backend is None or r[1] == backend]


def session_info(record: SessionRecord[S], live: bool, files: FileStore) -> SessionInfo:
    """What `Backend.sessions` reports for a record: with the ids of the files its runs generated."""
    return SessionInfo(
        session_id=record.session_id,
        created_at=record.created_at,
        last_used_at=record.last_used_at,
        live=live,
        file_ids=tuple(f.file_id for f in files.list(record.session_id)),
    )


def _record(row: tuple[object, ...], kind: type[S]) -> SessionRecord[S]:
    try:
        raw = json.loads(str(row[4]))
    except ValueError:
        raw = {}
    state = kind.load(raw if isinstance(raw, dict) else {})
    return SessionRecord(
        str(row[0]),
        str(row[1]),
        float(row[2]),  # type: ignore[arg-type]
        float(row[3]),  # type: ignore[arg-type]
        state,
        bool(row[5]),
    )
