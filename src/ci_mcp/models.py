"""Plain values passed between the server and the backends. No MCP, Azure or Jupyter types here."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal

FileOrigin = Literal["upload", "generated"]


@dataclass(frozen=True)
class FileInfo:
    """A stored file: an upload, or a file an analysis generated."""

    file_id: str
    name: str
    size: int
    media_type: str
    origin: FileOrigin
    sha256: str
    created_at: float
    session_id: str | None = None

    @property
    def is_image(self) -> bool:
        return self.media_type in ("image/png", "image/jpeg", "image/gif", "image/webp")

    @property
    def is_text(self) -> bool:
        return self.media_type.startswith("text/") or self.media_type in (
            "application/json",
            "application/xml",
            "application/x-ndjson",
        )


@dataclass(frozen=True)
class TextOutput:
    """Text the run produced: a stream (stdout/stderr), a result repr, or the model's answer."""

    text: str
    kind: Literal["stdout", "stderr", "result", "answer", "code"] = "stdout"


@dataclass(frozen=True)
class ImageOutput:
    """A picture the run produced (a displayed figure or a PNG file). `file` holds the full-size original."""

    file: FileInfo
    data: bytes


@dataclass(frozen=True)
class ErrorOutput:
    """The user's code raised: error name, value and traceback, as data."""

    name: str
    value: str
    traceback: str


OutputItem = TextOutput | ImageOutput | ErrorOutput


OutputCallback = Callable[[str, str], Awaitable[None]]
"""Live output of a run: (stream name, text)."""


@dataclass(frozen=True)
class RunRequest:
    """One analysis step. `code` runs as is; `request` is natural language for a model that writes code."""

    session_id: str | None
    code: str | None
    request: str | None
    file_ids: tuple[str, ...] = ()
    timeout_seconds: float | None = None
    on_output: OutputCallback | None = field(default=None, compare=False)
    """Called with ("stdout" | "stderr", text) as the code prints, by backends that can stream (local); the result
    still carries all of it. Must be cheap; what it raises is ignored."""


RunStatus = Literal["ok", "error", "timeout", "kernel_died", "cancelled", "incomplete", "server_error"]
"""`incomplete`: a remote run stopped early (e.g. an output-token limit); what it produced is returned.
`server_error`: the server itself failed during the run (not the code); the output up to then is kept."""


@dataclass(frozen=True)
class RunResult:
    """What one run produced, in order, plus the files it generated and notices for the model."""

    session_id: str
    status: RunStatus
    outputs: tuple[OutputItem, ...]
    generated_files: tuple[FileInfo, ...]
    notices: tuple[str, ...] = ()
    duration_seconds: float = 0.0


@dataclass(frozen=True)
class SessionInfo:
    session_id: str
    created_at: float
    last_used_at: float
    live: bool
    file_ids: tuple[str, ...] = field(default=())


ProgressCallback = Callable[[float, float | None, str], Awaitable[None]]
"""Called with (progress, total, message) while a run goes on. Must be cheap and must not raise."""


async def no_progress(progress: float, total: float | None, message: str) -> None:
    return None
