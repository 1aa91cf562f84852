"""The server's files: one facade over the store, whatever the backend.

`Files` is what the MCP face calls for files: `upload` (an inline or local file, already checked by the server's
upload policy), `info`, `path` and `list` (for fetch_generated_file, list_files and the `ci-mcp://files/{id}`
resource). Backends have no file methods: the one thing a backend may want to hear about is an upload that landed
(`backends.base.AttachesFiles.file_stored`), which the Azure backends use to send the bytes to their service.

The files a run generates are kept by the backend that ran it, through `keep_generated` (on the event loop: it hands
the write to a worker thread) or `keep_generated_now` (for code already running in one). They are the one write
path for generated files, so every backend stores them the same way and none writes on the event loop.
"""

from __future__ import annotations

import builtins
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import BinaryIO, Protocol

import anyio

from ci_mcp.backends.base import AttachesFiles
from ci_mcp.models import FileInfo
from ci_mcp.store import FileStore

FileStored = Callable[[FileInfo], Awaitable[None]]


class FileAccess(Protocol):
    """What the server calls for files: `Files`, or `ownership.OwnedFiles` around it."""

    async def upload(self, name: str, source: Path | bytes) -> FileInfo: ...

    async def info(self, file_id: str) -> FileInfo: ...

    async def path(self, file_id: str) -> Path:
        """A local path holding the file's bytes (the store's copy); never modify it."""
        ...

    async def list(self, session_id: str | None = None) -> builtins.list[FileInfo]: ...


class Files:
    """Uploads into the store, and lookups in it. Store writes run in a worker thread, never on the event loop."""

    def __init__(self, store: FileStore, *, max_upload_bytes: int, on_stored: FileStored | None = None) -> None:
        """`on_stored`: awaited with each upload once it is stored; what it raises is the upload's answer (the
        stored copy stays, and the backend sees it again when a run uses it)."""
        self.store = store
        self.max_upload_bytes = max_upload_bytes
        self.on_stored = on_stored

    async def upload(self, name: str, source: Path | bytes) -> FileInfo:
        """Keep `source` (bytes, or a local file copied in, at most `max_upload_bytes`) as an upload."""
        if isinstance(source, bytes):
            put = partial(self.store.put_bytes, name, source, origin="upload")
        else:
            put = partial(self.store.put_path, name, source, origin="upload", max_bytes=self.max_upload_bytes)
        info = await anyio.to_thread.run_sync(put)
        if self.on_stored is not None:
            await self.on_stored(info)
        return info

    async def info(self, file_id: str) -> FileInfo:
        return self.store.get(file_id)

    async def path(self, file_id: str) -> Path:
        return self.store.path(file_id)

    async def list(self, session_id: str | None = None) -> builtins.list[FileInfo]:
        return self.store.list(session_id)


def files_for(backend: object, store: FileStore, max_upload_bytes: int) -> Files:
    """The facade the server serves `backend`'s files through: over `store`, telling the backend of each upload
    when it implements `AttachesFiles`."""
    on_stored = backend.file_stored if isinstance(backend, AttachesFiles) else None
    return Files(store, max_upload_bytes=max_upload_bytes, on_stored=on_stored)


def keep_generated_now(
    store: FileStore,
    name: str,
    source: bytes | BinaryIO,
    *,
    session_id: str,
    media_type: str | None = None,
    max_bytes: int | None = None,
) -> FileInfo:
    """Keep a file a run of `session_id` generated; blocking, so call it from a worker thread. `source`: the
    bytes, or an open file read to its end (refused past `max_bytes`, which a stream needs)."""
    if isinstance(source, bytes):
        return store.put_bytes(name, source, origin="generated", session_id=session_id, media_type=media_type)
    if max_bytes is None:
        raise ValueError("a generated file read from a stream needs max_bytes")
    return store.put_stream(
        name, source, origin="generated", max_bytes=max_bytes, session_id=session_id, media_type=media_type
    )


async def keep_generated(
    store: FileStore, name: str, data: bytes, *, session_id: str, media_type: str | None = None
) -> FileInfo:
    """`keep_generated_now`, from the event loop: the write runs in a worker thread."""
    return await anyio.to_thread.run_sync(
        partial(keep_generated_now, store, name, data, session_id=session_id, media_type=media_type)
    )
