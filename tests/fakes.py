"""A scripted backend for tests of the MCP surface: no kernel, no network, answers in microseconds.

`FakeBackend` implements only the Backend protocol (src/ci_mcp/backends/base.py): sessions and runs, no file
methods. The server serves uploads, fetches, listings and the `ci-mcp://files/` resource from the real `FileStore`
the fake is built on, as in production, and a run keeps its files there as every backend does. A run
does what the test scripted for it (`script`): produce outputs, write generated files, report progress, raise a
`CiMcpError`, or anything else; without a script it echoes the code as stdout. Every `RunRequest` the server
passed is kept in `requests`, so a test can check how tool arguments reach a backend.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import anyio

from ci_mcp.errors import CiMcpError, InvalidInputError
from ci_mcp.files import keep_generated
from ci_mcp.models import (
    FileInfo,
    ImageOutput,
    OutputItem,
    ProgressCallback,
    RunRequest,
    RunResult,
    RunStatus,
    SessionInfo,
    TextOutput,
)
from ci_mcp.sessions import new_session_id, no_such_session
from ci_mcp.store import FileStore


@dataclass(frozen=True)
class Generated:
    """A file the scripted run writes: stored as a generated file of the session. `image`: also shown as a picture
    (as a displayed figure or a PNG the code saved would be)."""

    name: str
    data: bytes
    image: bool = False
    media_type: str | None = None


@dataclass(frozen=True)
class Step:
    """What one scripted run does. A `Generated` entry in `outputs` is a picture shown in that place (an
    `ImageOutput` backed by the stored file); `files` are stored after the outputs, in order."""

    outputs: Sequence[OutputItem | Generated] = ()
    files: Sequence[Generated] = ()
    status: RunStatus = "ok"
    notices: Sequence[str] = ()
    progress: Sequence[tuple[float, float | None, str]] = ()
    raises: Exception | None = None
    """Raised after progress is reported and before anything is stored; `session_id` is set on a CiMcpError."""
    wait: anyio.Event | None = None
    """Awaited (after progress) before the run finishes: a test can hold a run open."""
    cancelled: anyio.Event | None = None
    """Set when the run is cancelled while it waits (the backend is told, as a kernel would be interrupted)."""


@dataclass
class FakeBackend:
    """The Backend protocol, scripted: sessions in memory, files in the real store, runs from `script`."""

    store: FileStore
    name: str = "fake"
    accepts_code: bool = True
    accepts_request: bool = False
    data_mount: str = "/mnt/data"
    description: str = "Scripted test backend: files are in /mnt/data."
    requests: list[RunRequest] = field(default_factory=list)
    started: bool = False
    closed: bool = False
    _steps: deque[Step] = field(default_factory=deque)
    _sessions: dict[str, SessionInfo] = field(default_factory=dict)

    def script(self, *steps: Step) -> None:
        """The next runs, in order; once they are used up, runs echo their code."""
        self._steps.extend(steps)

    # -- the Backend protocol ------------------------------------------------------------------------------

    async def start(self) -> None:
        self.started = True

    async def aclose(self) -> None:
        self.closed = True

    def describe(self) -> str:
        return self.description

    async def close_session(self, session_id: str) -> None:
        self._session(session_id)
        old = self._sessions[session_id]
        self._sessions[session_id] = SessionInfo(session_id, old.created_at, time.time(), live=False)

    async def sessions(self) -> list[SessionInfo]:
        return list(self._sessions.values())

    async def run(self, request: RunRequest, progress: ProgressCallback) -> RunResult:
        self.requests.append(request)
        if not request.code and not (self.accepts_request and request.request):
            raise InvalidInputError("Pass `code` (Python to run).")
        for fid in request.file_ids:
            self.store.get(fid)
        if request.session_id is None:
            session_id = new_session_id()
            now = time.time()
            self._sessions[session_id] = SessionInfo(session_id, now, now, live=True)
        else:
            session_id = self._session(request.session_id).session_id
        step = self._steps.popleft() if self._steps else Step(outputs=[TextOutput(request.code or "")])
        for done, total, message in step.progress:
            await progress(done, total, message)
        if step.wait is not None:
            try:
                await step.wait.wait()
            except anyio.get_cancelled_exc_class():
                if step.cancelled is not None:
                    step.cancelled.set()
                raise
        if step.raises is not None:
            if isinstance(step.raises, CiMcpError):
                step.raises.session_id = session_id
            raise step.raises
        return await self._result(session_id, step)

    # -- helpers -------------------------------------------------------------------------------------------

    def _session(self, session_id: str) -> SessionInfo:
        known = self._sessions.get(session_id)
        if known is None:
            raise no_such_session(session_id)
        return known

    async def _keep(self, session_id: str, file: Generated) -> FileInfo:
        return await keep_generated(self.store, file.name, file.data, session_id=session_id, media_type=file.media_type)

    async def _result(self, session_id: str, step: Step) -> RunResult:
        outputs: list[OutputItem] = []
        generated: list[FileInfo] = []
        for item in step.outputs:
            if isinstance(item, Generated):
                info = await self._keep(session_id, item)
                generated.append(info)
                outputs.append(ImageOutput(info, item.data))
            else:
                outputs.append(item)
        for file in step.files:
            info = await self._keep(session_id, file)
            generated.append(info)
            if file.image:
                outputs.append(ImageOutput(info, file.data))
        return RunResult(
            session_id=session_id,
            status=step.status,
            outputs=tuple(outputs),
            generated_files=tuple(generated),
            notices=tuple(step.notices),
            duration_seconds=0.01,
        )
