"""Who owns what over HTTP: sessions and files belong to the principal whose request created them.

`OwnedBackend` wraps any backend (sessions and runs) and `OwnedFiles` the server's files (`files.Files`). Each call
asks `current_principal()` (the server reads it off the request's
token); with no principal (stdio, or HTTP without authentication) it passes everything through: one implicit
principal. With one, every id the call names must be that principal's, or the answer is the same "not found" an
unknown id gets; what the call creates (an upload, a session, generated files) is recorded as that principal's.
Ownership lives in `<data_dir>/owners.sqlite3`, so it survives restarts; an id with no owner row (created over
stdio, or before a crash landed the row) belongs to no authenticated principal.
"""

from __future__ import annotations

import builtins
import sqlite3
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

from ci_mcp.backends.base import Backend
from ci_mcp.errors import CapacityError
from ci_mcp.files import FileAccess
from ci_mcp.models import FileInfo, ProgressCallback, RunRequest, RunResult, SessionInfo
from ci_mcp.sessions import no_such_session
from ci_mcp.store import no_such_file

_SCHEMA = """
CREATE TABLE IF NOT EXISTS owners (
    kind TEXT NOT NULL,
    id TEXT NOT NULL,
    principal TEXT NOT NULL,
    PRIMARY KEY (kind, id)
);
CREATE INDEX IF NOT EXISTS owners_by_principal ON owners(principal, kind);
"""


class Owners:
    """The owner of each session and file id. Quick synchronous calls, safe from any thread."""

    def __init__(self, data_dir: Path) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(data_dir / "owners.sqlite3", check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()

    def close(self) -> None:
        self._db.close()

    def claim(self, kind: str, ids: Iterable[str], principal: str) -> None:
        """Record `principal` as the owner of new ids; an id someone else owns keeps its owner."""
        with self._lock:
            self._db.executemany("INSERT OR IGNORE INTO owners VALUES (?, ?, ?)", [(kind, i, principal) for i in ids])

    def owns(self, kind: str, id_: str, principal: str) -> bool:
        with self._lock:
            row = self._db.execute("SELECT principal FROM owners WHERE kind = ? AND id = ?", (kind, id_)).fetchone()
        return row is not None and row[0] == principal

    def owned(self, kind: str, principal: str) -> set[str]:
        with self._lock:
            rows = self._db.execute(
                "SELECT id FROM owners WHERE kind = ? AND principal = ?", (kind, principal)
            ).fetchall()
        return {r[0] for r in rows}


PrincipalOf = Callable[[], str | None]


class _Checks:
    """The two questions both wrappers ask: is this file, this session, the caller's? If not: "not found"."""

    def __init__(self, owners: Owners, current_principal: PrincipalOf) -> None:
        self.owners = owners
        self.current_principal = current_principal

    def _file(self, principal: str | None, file_id: str) -> None:
        if principal is not None and not self.owners.owns("file", file_id, principal):
            raise no_such_file(file_id)

    def _session(self, principal: str | None, session_id: str) -> None:
        if principal is not None and not self.owners.owns("session", session_id, principal):
            raise no_such_session(session_id)


class OwnedFiles(_Checks):
    """The server's files, each visible only to the principal that uploaded it or whose run generated it."""

    def __init__(self, inner: FileAccess, owners: Owners, current_principal: PrincipalOf) -> None:
        super().__init__(owners, current_principal)
        self.inner = inner

    async def upload(self, name: str, source: Path | bytes) -> FileInfo:
        principal = self.current_principal()
        info = await self.inner.upload(name, source)
        if principal is not None:
            self.owners.claim("file", [info.file_id], principal)
        return info

    async def info(self, file_id: str) -> FileInfo:
        self._file(self.current_principal(), file_id)
        return await self.inner.info(file_id)

    async def path(self, file_id: str) -> Path:
        self._file(self.current_principal(), file_id)
        return await self.inner.path(file_id)

    async def list(self, session_id: str | None = None) -> builtins.list[FileInfo]:
        principal = self.current_principal()
        if principal is None:
            return await self.inner.list(session_id)
        if session_id is not None:
            self._session(principal, session_id)
        mine = self.owners.owned("file", principal)
        return [f for f in await self.inner.list(session_id) if f.file_id in mine]


class OwnedBackend(_Checks):
    """A backend whose sessions are visible only to the principal that created them, and whose runs use only that
    principal's files (see the module docstring)."""

    def __init__(
        self,
        inner: Backend,
        owners: Owners,
        current_principal: PrincipalOf,
        max_live_sessions: int,
    ) -> None:
        super().__init__(owners, current_principal)
        self.inner = inner
        self.max_live_sessions = max_live_sessions
        self.name = inner.name
        self.accepts_code = inner.accepts_code
        self.accepts_request = inner.accepts_request
        self.data_mount = inner.data_mount

    async def start(self) -> None:
        await self.inner.start()

    async def aclose(self) -> None:
        await self.inner.aclose()

    def describe(self) -> str:
        return self.inner.describe()

    async def run(self, request: RunRequest, progress: ProgressCallback) -> RunResult:
        principal = self.current_principal()
        if principal is not None:
            for file_id in request.file_ids:
                self._file(principal, file_id.strip())
            if request.session_id is not None:
                self._session(principal, request.session_id.strip())
            else:
                await self._check_room(principal)
        result = await self.inner.run(request, progress)
        if principal is not None:
            self.owners.claim("session", [result.session_id], principal)
            self.owners.claim("file", [f.file_id for f in result.generated_files], principal)
        return result

    async def _check_room(self, principal: str) -> None:
        mine = self.owners.owned("session", principal)
        live = [s for s in await self.inner.sessions() if s.live and s.session_id in mine]
        if len(live) >= self.max_live_sessions:
            raise CapacityError(
                f"You have {len(live)} live sessions, the most one client may hold on this server "
                f"(CI_MCP_MAX_SESSIONS_PER_PRINCIPAL). Continue one by session_id "
                f"({', '.join(s.session_id for s in live[:4])}) or end one with close_session."
            )

    async def close_session(self, session_id: str) -> None:
        self._session(self.current_principal(), session_id)
        await self.inner.close_session(session_id)

    async def sessions(self) -> list[SessionInfo]:
        principal = self.current_principal()
        if principal is None:
            return await self.inner.sessions()
        mine = self.owners.owned("session", principal)
        return [s for s in await self.inner.sessions() if s.session_id in mine]
