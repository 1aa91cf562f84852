"""The Backend protocol: what `server.py` calls, and nothing else. Backends run sessions; files are the server's.

Who calls what:
- `server.py` calls `start()` once when the MCP server starts and `aclose()` once when it stops.
- `run` executes one analysis step; it creates the session when `request.session_id` is None. It reports
  progress through `progress` and must honour cancellation (anyio cancel scope): interrupt the kernel or
  cancel the remote run, then re-raise. The files it names are in the store the backend was built with; the
  files the run generates go into that store through `ci_mcp.files.keep_generated` (or `keep_generated_now`).
- `close_session` ends a session's kernel or remote conversation; its files stay fetchable.
- `sessions` lists this backend's sessions (the ownership check counts a principal's live ones).

Uploads, `fetch_generated_file`, `list_files` and the `ci-mcp://files/{id}` resource are served by the server
from its store (`ci_mcp.files.Files`), never by a backend. A backend whose service needs files sent to it
implements `AttachesFiles` too: the server awaits `file_stored` after each upload is stored.

Backends never import `mcp`; errors they raise are `ci_mcp.errors.CiMcpError` subclasses.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

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

    async def run(self, request: RunRequest, progress: ProgressCallback) -> RunResult: ...

    async def close_session(self, session_id: str) -> None: ...

    async def sessions(self) -> list[SessionInfo]: ...

    def describe(self) -> str:
        """One paragraph for the tool description: what this backend runs and how files are seen."""
        ...


@runtime_checkable
class AttachesFiles(Protocol):
    """The one file hook, for backends whose service keeps its own copy of the files (the Azure backends)."""

    async def file_stored(self, info: FileInfo) -> None:
        """An upload is in the store (read it with `store.path(info.file_id)`): send it to the service now if
        that is how the backend works. What this raises is the upload's answer; the stored copy stays, so the
        backend should send it again when a run first uses it."""
        ...
