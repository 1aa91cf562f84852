"""The embedded, durable file store: the server's, shared by every backend (session records: `sessions.py`).

Bytes live in `<data_dir>/files/<file_id>`, written to `<data_dir>/tmp/` first, fsynced and renamed into place.
Metadata lives in SQLite (`<data_dir>/meta.sqlite3`), inserted only after the bytes are in place. So a crash
leaves at worst an orphan blob, which `open()` removes; never a row without its file.
"""

from __future__ import annotations

import builtins
import errno
import hashlib
import mimetypes
import os
import secrets
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from ci_mcp.errors import FileTooLargeError, NotFoundError, StorageFullError
from ci_mcp.models import FileInfo, FileOrigin

if TYPE_CHECKING:
    from ci_mcp.settings import Settings

OtherIds = Callable[[str], "str | None"]
"""A backend's answer for a file id the store does not know (`FileStore.recognise_ids`)."""

_CHUNK = 1024 * 1024
MB = 1024 * 1024

_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    file_id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    size INTEGER NOT NULL,
    media_type TEXT NOT NULL,
    origin TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    created_at REAL NOT NULL,
    session_id TEXT
);
CREATE INDEX IF NOT EXISTS files_by_session ON files(session_id);
CREATE INDEX IF NOT EXISTS files_by_content ON files(sha256);
"""

_EXTRA_TYPES = {
    ".csv": "text/csv",
    ".md": "text/markdown",
    ".json": "application/json",
    ".parquet": "application/vnd.apache.parquet",
    ".xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    ".webp": "image/webp",
    ".svg": "image/svg+xml",
    ".log": "text/plain",
    ".py": "text/x-python",
}


def guess_media_type(name: str) -> str:
    suffix = Path(name).suffix.lower()
    if suffix in _EXTRA_TYPES:
        return _EXTRA_TYPES[suffix]
    guessed, _ = mimetypes.guess_type(name, strict=False)
    return guessed or "application/octet-stream"


def open_store(settings: Settings) -> FileStore:
    """The store of the configured data directory, with its quota (`CI_MCP_MAX_STORE_MB`)."""
    return FileStore(settings.data_dir, max_bytes=settings.max_store_mb * MB)


def no_such_file(file_id: str) -> NotFoundError:
    """The one answer for a file id that is unknown, or not the caller's."""
    hint = " That looks like a session id; pass it as session_id." if file_id.startswith("sess-") else ""
    return NotFoundError(
        f"No file with id '{file_id}'.{hint} Use an id returned by upload_file or run_code_analysis "
        "(list_files shows them)."
    )


def new_file_id() -> str:
    return "file-" + secrets.token_hex(12)


class FileStore:
    """Files and their metadata on disk. Methods are synchronous and quick; call them from any thread."""

    def __init__(self, data_dir: Path, *, max_bytes: int | None = None) -> None:
        """`max_bytes`: the store's quota (distinct content counted once); None for no quota."""
        self.data_dir = data_dir
        self.max_bytes = max_bytes
        self._commit_lock = threading.Lock()
        self._other_ids: OtherIds | None = None
        self.files_dir = data_dir / "files"
        self.tmp_dir = data_dir / "tmp"
        self.workspaces_dir = data_dir / "workspaces"
        for d in (self.files_dir, self.tmp_dir, self.workspaces_dir):
            d.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._db = sqlite3.connect(data_dir / "meta.sqlite3", check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # WAL: durable across process crashes
        self._db.executescript(_SCHEMA)
        self._recover()

    def close(self) -> None:
        self._db.close()

    # -- recovery --------------------------------------------------------------------------------------------

    def _recover(self) -> None:
        """Remove half-written temporaries and blobs whose metadata row never landed."""
        for tmp in self.tmp_dir.iterdir():
            if tmp.is_dir():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink(missing_ok=True)
        known = {row[0] for row in self._db.execute("SELECT file_id FROM files")}
        for blob in self.files_dir.iterdir():
            if blob.name not in known:
                blob.unlink(missing_ok=True)
        missing = [fid for fid in known if not (self.files_dir / fid).exists()]
        for fid in missing:  # a blob deleted by hand: drop the row so the listing stays truthful
            self._db.execute("DELETE FROM files WHERE file_id = ?", (fid,))

    # -- files -----------------------------------------------------------------------------------------------

    def no_space(self, what: str, lost: str = "") -> StorageFullError:
        """The error for a full disk under the data directory: what was lost, where, and what to do."""
        return no_space(self.data_dir, what, lost)

    @contextmanager
    def _staged(self, name: str) -> Iterator[tuple[Path, BinaryIO]]:
        tmp = self.tmp_dir / secrets.token_hex(8)
        with disk_errors(self.data_dir, f"'{name}' was not kept", lost=name):
            try:
                with open(tmp, "wb") as fh:
                    yield tmp, fh
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise

    def _commit(
        self,
        tmp: Path,
        fh: BinaryIO,
        *,
        name: str,
        size: int,
        sha256: str,
        origin: FileOrigin,
        session_id: str | None,
        media_type: str | None,
    ) -> FileInfo:
        """Keep the staged bytes as a file. Identical content is stored once: the same name, origin and session
        get the existing record back (a file that was only touched again); another name gets a new id whose blob
        is a hard link to the existing one. New content past the quota is refused."""
        media_type = media_type or guess_media_type(name)
        with self._commit_lock:
            same = self._db.execute(
                "SELECT * FROM files WHERE sha256 = ? AND size = ? ORDER BY created_at", (sha256, size)
            ).fetchall()
            for row in same:
                known = _file_from_row(row)
                if (known.name, known.origin, known.session_id, known.media_type) == (
                    name,
                    origin,
                    session_id,
                    media_type,
                ) and (self.files_dir / known.file_id).exists():
                    fh.close()
                    tmp.unlink(missing_ok=True)
                    return known
            file_id = new_file_id()
            if not any(self._link(row[0], file_id) for row in same):
                self._check_quota(name, size)
                fh.flush()
                os.fsync(fh.fileno())
                os.replace(tmp, self.files_dir / file_id)
            else:
                fh.close()
                tmp.unlink(missing_ok=True)
            try:
                return self._insert(file_id, name, size, sha256, origin, session_id, media_type)
            except BaseException:
                (self.files_dir / file_id).unlink(missing_ok=True)  # never a blob without its row
                raise

    def _link(self, existing_id: str, file_id: str) -> bool:
        try:
            os.link(self.files_dir / existing_id, self.files_dir / file_id)
        except OSError:
            return False
        return True

    def used_bytes(self) -> int:
        """Bytes the store holds, each distinct content once."""
        row = self._db.execute(
            "SELECT COALESCE(SUM(size), 0) FROM (SELECT MAX(size) AS size FROM files GROUP BY sha256)"
        )
        return int(row.fetchone()[0])

    def _check_quota(self, name: str, size: int) -> None:
        if self.max_bytes is None:
            return
        used = self.used_bytes()
        if used + size > self.max_bytes:
            full = f"The file store is at its quota of {self.max_bytes // MB:,} MB ({used:,} bytes in use)"
            advice = (
                "Nothing you can pass fixes this: ask the operator to raise CI_MCP_MAX_STORE_MB, or to delete files "
                f"no longer needed from {self.files_dir} (the server forgets them at its next start)."
            )
            raise StorageFullError(
                f"{full}, so '{name}' ({size:,} bytes) was not kept. {advice}", lost=name, cause=f"{full}. {advice}"
            )

    def _insert(
        self,
        file_id: str,
        name: str,
        size: int,
        sha256: str,
        origin: FileOrigin,
        session_id: str | None,
        media_type: str,
    ) -> FileInfo:
        info = FileInfo(
            file_id=file_id,
            name=name,
            size=size,
            media_type=media_type,
            origin=origin,
            sha256=sha256,
            created_at=time.time(),
            session_id=session_id,
        )
        self._db.execute(
            "INSERT INTO files VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                info.file_id,
                info.name,
                info.size,
                info.media_type,
                info.origin,
                info.sha256,
                info.created_at,
                info.session_id,
            ),
        )
        return info

    def put_bytes(
        self,
        name: str,
        data: bytes,
        *,
        origin: FileOrigin,
        session_id: str | None = None,
        media_type: str | None = None,
    ) -> FileInfo:
        with self._staged(name) as (tmp, fh):
            fh.write(data)
            return self._commit(
                tmp,
                fh,
                name=name,
                size=len(data),
                sha256=hashlib.sha256(data).hexdigest(),
                origin=origin,
                session_id=session_id,
                media_type=media_type,
            )

    def put_path(
        self,
        name: str,
        source: Path,
        *,
        origin: FileOrigin,
        max_bytes: int,
        session_id: str | None = None,
        media_type: str | None = None,
    ) -> FileInfo:
        """Copy `source` in, hashing as it goes; refuse (and leave nothing) past `max_bytes`."""
        with open(source, "rb") as src:
            return self.put_stream(
                name, src, origin=origin, max_bytes=max_bytes, session_id=session_id, media_type=media_type
            )

    def put_stream(
        self,
        name: str,
        src: BinaryIO,
        *,
        origin: FileOrigin,
        max_bytes: int,
        session_id: str | None = None,
        media_type: str | None = None,
    ) -> FileInfo:
        digest = hashlib.sha256()
        size = 0
        with self._staged(name) as (tmp, fh):
            while chunk := src.read(_CHUNK):
                size += len(chunk)
                if size > max_bytes:
                    raise FileTooLargeError(
                        f"'{name}' is larger than the limit of {max_bytes:,} bytes; "
                        "split it or upload a smaller extract."
                    )
                digest.update(chunk)
                fh.write(chunk)
            return self._commit(
                tmp,
                fh,
                name=name,
                size=size,
                sha256=digest.hexdigest(),
                origin=origin,
                session_id=session_id,
                media_type=media_type,
            )

    def recognise_ids(self, other_ids: OtherIds) -> None:
        """Let a backend whose service gives files ids of its own (Azure) answer for an id the store does not know:
        `other_ids(id)` returns the store's id of that file, raises a `NotFoundError` that says what the id is, or
        returns None (the usual "no file" answer)."""
        self._other_ids = other_ids

    def get(self, file_id: str) -> FileInfo:
        row = self._db.execute("SELECT * FROM files WHERE file_id = ?", (file_id,)).fetchone()
        if row is None and self._other_ids is not None:
            known = self._other_ids(file_id)
            if known is not None:
                row = self._db.execute("SELECT * FROM files WHERE file_id = ?", (known,)).fetchone()
        if row is None:
            raise no_such_file(file_id)
        return _file_from_row(row)

    def path(self, file_id: str) -> Path:
        return self.files_dir / self.get(file_id).file_id

    def read(self, file_id: str) -> bytes:
        return self.path(file_id).read_bytes()

    def list(self, session_id: str | None = None) -> builtins.list[FileInfo]:
        if session_id is None:
            rows = self._db.execute("SELECT * FROM files ORDER BY created_at").fetchall()
        else:
            rows = self._db.execute(
                "SELECT * FROM files WHERE session_id = ? ORDER BY created_at", (session_id,)
            ).fetchall()
        return [_file_from_row(r) for r in rows]

    def delete(self, file_id: str) -> None:
        """Forget a file: the row goes first, then the blob, so a crash between leaves an orphan blob (removed by
        the next `open`), never a row without its file."""
        self._db.execute("DELETE FROM files WHERE file_id = ?", (file_id,))
        (self.files_dir / file_id).unlink(missing_ok=True)


def no_space(data_dir: Path, what: str, lost: str = "") -> StorageFullError:
    """The error for a full disk under `data_dir`: what was lost, where, and what to do."""
    where = f"No space left on the disk holding the data directory {data_dir}"
    advice = "Nothing you can pass fixes this: ask the operator to free space on that disk or to point "
    advice += "CI_MCP_DATA_DIR at a larger one."
    return StorageFullError(f"{where}, so {what}. {advice}", lost=lost, cause=f"{where}. {advice}")


@contextmanager
def disk_errors(data_dir: Path, what: str, lost: str = "") -> Iterator[None]:
    """Turn a full disk (ENOSPC, EDQUOT, SQLite's 'disk is full') under `data_dir` into `no_space(what)`."""
    try:
        yield
    except (OSError, sqlite3.OperationalError) as exc:
        if is_disk_full(exc):
            raise no_space(data_dir, what, lost) from exc
        raise


def is_disk_full(exc: BaseException) -> bool:
    """A full disk or quota: ENOSPC/EDQUOT, or SQLite's SQLITE_FULL."""
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    if isinstance(exc, sqlite3.OperationalError):
        return getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL or "full" in str(exc).lower()
    return False


def _file_from_row(row: tuple[object, ...]) -> FileInfo:
    return FileInfo(
        file_id=str(row[0]),
        name=str(row[1]),
        size=int(row[2]),  # type: ignore[call-overload]
        media_type=str(row[3]),
        origin="upload" if row[4] == "upload" else "generated",
        sha256=str(row[5]),
        created_at=float(row[6]),  # type: ignore[arg-type]
        session_id=None if row[7] is None else str(row[7]),
    )
