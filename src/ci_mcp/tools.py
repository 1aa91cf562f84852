"""What each tool does, apart from its MCP signature and its rendering.

`server.py` registers the tools (names, descriptions, argument schemas) and calls a `ToolHandlers` method with the
arguments as given; the answer is a domain value that `rendering.py` turns into MCP content. The handlers work over
the server's files (`files.FileAccess`), the backend and the settings; what an argument may be is decided where it
already is (`uploads.py` for uploads, `paths.py` for paths). No MCP here, and what a handler raises is answered by the
one mapping of failures to tool errors (`rendering.answers_errors`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import anyio

from ci_mcp import paths, uploads
from ci_mcp.backends.base import Backend
from ci_mcp.files import FileAccess
from ci_mcp.models import FileInfo, ProgressCallback, RunRequest, RunResult
from ci_mcp.ownership import PrincipalOf
from ci_mcp.settings import Settings
from ci_mcp.uploads import ChunkedUploads, Progress


@dataclass(frozen=True)
class Uploaded:
    """A stored upload and the name the caller gave it (the stored name is what the code sees)."""

    info: FileInfo
    given: str


@dataclass(frozen=True)
class Saved:
    """A file written where `save_to` asked."""

    info: FileInfo
    target: Path


@dataclass(frozen=True)
class Found:
    """A file to return in the result: its record and the store's copy of its bytes."""

    info: FileInfo
    source: Path


@dataclass(frozen=True)
class UploadArgs:
    """upload_file's arguments, as the caller gave them."""

    path: str | None = None
    content_base64: str | None = None
    filename: str | None = None
    more: bool = False
    upload_id: str | None = None
    offset: int = 0
    sha256: str | None = None

    @property
    def chunked(self) -> bool:
        return self.more or self.upload_id is not None


class ToolHandlers:
    """The tools' bodies over one files facade, one backend and the settings."""

    def __init__(
        self,
        files: FileAccess,
        backend: Backend,
        settings: Settings,
        chunks: ChunkedUploads,
        current_principal: PrincipalOf,
    ) -> None:
        self.files = files
        self.backend = backend
        self.settings = settings
        self.chunks = chunks
        self.current_principal = current_principal

    def roots(self, client_roots: Sequence[str] | None) -> paths.Roots:
        """The directories paths may name: the configured ones, narrowed by the client's roots (URIs) if it gave
        any."""
        client = (paths.roots_from_uris(list(client_roots)) or None) if client_roots else None
        return paths.effective_roots(self.settings.allowed_dirs, client, Path.cwd(), Path.home())

    async def upload_file(self, args: UploadArgs, client_roots: Sequence[str] | None) -> Progress | Uploaded:
        if args.chunked:
            return await self._chunk(args)
        roots = self.roots(client_roots)
        uploads.one_source(args.path, args.content_base64)
        if args.content_base64 is not None:
            limit = self.settings.max_inline_upload_bytes
            data = uploads.inline_bytes(args.content_base64, args.filename, limit)
            assert args.filename is not None
            return Uploaded(await self.files.upload(uploads.clean_name(args.filename), data), args.filename)
        assert args.path is not None
        real = paths.resolve_readable(args.path, roots)
        uploads.check_local_size(args.path, real.stat().st_size, self.settings.max_upload_bytes)
        given = args.filename or real.name
        return Uploaded(await self.files.upload(uploads.clean_name(given), real), given)

    async def _chunk(self, args: UploadArgs) -> Progress | Uploaded:
        """One chunk of a chunked upload; the stored file once the last chunk's checksum matched."""
        content = uploads.chunk_content(args.path, args.content_base64)
        what = args.filename or args.upload_id or "the chunk"
        data = uploads.decode_inline(content, what, self.settings.max_inline_upload_bytes)
        principal = self.current_principal()
        upload_id = args.upload_id
        if upload_id is None:
            name = uploads.first_chunk_name(args.filename, args.offset)
            started = await anyio.to_thread.run_sync(self.chunks.begin, name, data, principal)
            if args.more:
                return started
            upload_id = started.upload_id
        elif data or args.more:
            progress = await anyio.to_thread.run_sync(
                self.chunks.append, upload_id.strip(), args.offset, data, principal
            )
            if args.more:
                return progress
        return await self._finish(upload_id.strip(), args.sha256, principal)

    async def _finish(self, upload_id: str, sha256: str | None, principal: str | None) -> Uploaded:
        done = await anyio.to_thread.run_sync(self.chunks.finish, upload_id, sha256, principal)
        try:
            info = await self.files.upload(uploads.clean_name(done.name), done.path)
        finally:
            await anyio.to_thread.run_sync(self.chunks.discard, upload_id)
        return Uploaded(info, done.name)

    async def run_code_analysis(
        self,
        *,
        code: str | None,
        request: str | None,
        file_ids: list[str] | None,
        session_id: str | None,
        timeout_seconds: float | None,
        progress: ProgressCallback,
    ) -> RunResult:
        req = RunRequest(
            session_id=session_id or None,
            code=code or None,
            request=request or None,
            file_ids=uploads.file_ids_of(file_ids),
            timeout_seconds=timeout_seconds,
        )
        return await self.backend.run(req, progress)

    async def fetch_generated_file(
        self, file_id: str, save_to: str | None, overwrite: bool, client_roots: Sequence[str] | None
    ) -> Saved | Found:
        info = await self.files.info(file_id.strip())
        source = await self.files.path(info.file_id)
        if save_to is None:
            return Found(info, source)
        name = paths.safe_name(info.name)
        target = paths.resolve_writable(save_to, name, self.roots(client_roots), overwrite=overwrite)
        await anyio.to_thread.run_sync(paths.write_atomically, target, source)
        return Saved(info, target)

    async def list_files(self, session_id: str | None) -> list[FileInfo]:
        return await self.files.list(session_id or None)

    async def close_session(self, session_id: str) -> str:
        """End the session; the id as closed (stripped)."""
        session_id = session_id.strip()
        await self.backend.close_session(session_id)
        return session_id
