"""The Backend protocol: what `server.py` calls, and nothing else.

Who calls what:
- `server.py` calls `start()` once when the MCP server starts and `aclose()` once when it stops.
- `upload` stores a file (already size- and path-checked by the server for local paths) and returns its info.
- `run` executes one analysis step; it creates the session when `request.session_id` is None. It reports
  progress through `progress` and must honour cancellation (anyio cancel scope): interrupt the kernel or
  cancel the remote run, then re-raise.
- `file_info` / `file_path` serve `fetch_generated_file` and the `ci-mcp://files/{id}` resource.
- `close_session` ends a session's kernel or remote conversation; its files stay fetchable.

Backends never import `mcp`; errors they raise are `ci_mcp.errors.CiMcpError` subclasses.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from ci_mcp.models import FileInfo, ProgressCallback, RunRequest, RunResult, SessionInfo


class Backend(Protocol):
    name: str
    """Short name shown to the calling model and in logs: 'local', 'azure', 'azure-classic'."""

    accepts_code: bool
    """True when `RunRequest.code` is executed as given."""

    accepts_request: bool
    """True when a natural-language `RunRequest.request` can be served."""

    data_mount: str
    """Where uploaded files appear for the code (e.g. '/mnt/data'); empty: the working directory."""

    async def start(self) -> None: ...

    async def aclose(self) -> None: ...

    async def upload(self, name: str, source: Path | bytes) -> FileInfo: ...

    async def run(self, request: RunRequest, progress: ProgressCallback) -> RunResult: ...

    async def file_info(self, file_id: str) -> FileInfo: ...

    async def file_path(self, file_id: str) -> Path:
        """A local path holding the file's bytes (the store's copy); never modify it."""
        ...

    async def list_files(self, session_id: str | None = None) -> list[FileInfo]: ...

    async def close_session(self, session_id: str) -> None: ...

    async def sessions(self) -> list[SessionInfo]: ...

    def describe(self) -> str:
        """One paragraph for the tool description: what this backend runs and how files are seen."""
        ...
