"""`ci-mcp run`: one analysis from the terminal, outputs written to a folder (demos and debugging)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import TextIO

from ci_mcp import paths
from ci_mcp.backends.factory import create_backend
from ci_mcp.errors import InvalidInputError
from ci_mcp.files import files_for
from ci_mcp.models import ErrorOutput, ImageOutput, RunRequest, TextOutput
from ci_mcp.settings import Settings
from ci_mcp.store import open_store


def cli_words(message: str) -> str:
    """Messages written for MCP callers name the tool argument; on the command line the flag is `--timeout`."""
    return message.replace("a larger timeout_seconds", "a larger --timeout").replace("timeout_seconds", "--timeout")


class LiveView:
    """What the terminal shows while a run goes on: the code's output as it prints it (backends that stream it:
    local), stdout to stdout and stderr to stderr, and, when stderr is a terminal, one self-overwriting status
    line, so a long run is never silent until it ends."""

    def __init__(self, status_line: bool) -> None:
        self.streamed = False
        self._status_line = status_line
        self._status_shown = False
        self._mid_line: TextIO | None = None  # the stream whose last line is not finished yet

    async def output(self, name: str, text: str) -> None:
        self.clear_status()
        self.streamed = True
        stream = sys.stderr if name == "stderr" else sys.stdout
        stream.write(text)
        stream.flush()
        self._mid_line = None if text.endswith("\n") else stream

    async def progress(self, done: float, total: float | None, message: str) -> None:
        if self._status_line and self._mid_line is None:
            print(f"\r\033[Kci-mcp: {message}", end="", file=sys.stderr, flush=True)
            self._status_shown = True

    def end(self) -> None:
        """The run is over: no status line left, no unfinished line for what comes next to run into."""
        self.clear_status()
        if self._mid_line is not None:
            self._mid_line.write("\n")
            self._mid_line = None

    def clear_status(self) -> None:
        if self._status_shown:
            print("\r\033[K", end="", file=sys.stderr, flush=True)
            self._status_shown = False


async def run_once(
    settings: Settings, files: list[Path], code: str | None, request: str | None, out: Path, timeout: float | None
) -> int:
    for path in files:
        if not path.is_file():
            raise InvalidInputError(f"{path}: {'is a directory' if path.is_dir() else 'no such file'}")
    store = open_store(settings)
    backend = create_backend(settings, store)
    stored = files_for(backend, store, settings.max_upload_bytes)
    await backend.start()
    try:
        ids = []
        for path in files:
            info = await stored.upload(path.name, path.resolve())
            ids.append(info.file_id)
            print(f"uploaded {path} as {info.file_id}", file=sys.stderr)
        live = LiveView(status_line=sys.stderr.isatty())
        try:
            result = await backend.run(RunRequest(None, code, request, tuple(ids), timeout, live.output), live.progress)
        finally:
            live.end()
    finally:
        await backend.aclose()
    out.mkdir(parents=True, exist_ok=True)
    for item in result.outputs:
        if isinstance(item, TextOutput):
            if live.streamed and item.kind in ("stdout", "stderr"):
                continue  # already shown as the code printed it
            print(item.text, end="" if item.text.endswith("\n") else "\n")
        elif isinstance(item, ErrorOutput):
            print(f"{item.name}: {item.value}\n{item.traceback}", file=sys.stderr)
        elif isinstance(item, ImageOutput):
            print(f"[image {item.file.name} = {item.file.file_id}]")
    for info in result.generated_files:
        target = out / paths.safe_name(info.name)
        shutil.copyfile(store.path(info.file_id), target)
        print(f"wrote {target}", file=sys.stderr)
    for notice in result.notices:
        print(f"note: {cli_words(notice)}", file=sys.stderr)
    print(f"session {result.session_id}: {result.status}", file=sys.stderr)
    store.close()
    return 0 if result.status == "ok" else 1
