"""Turns kernel events into the run's ordered outputs: merged text, images stored as files, errors as data.

Text is kept in the result up to `text_limit` characters; all of it (up to a hard cap) is also written to a
spill file, which becomes a generated file when the result had to be cut, so nothing the code printed is lost.
"""

from __future__ import annotations

import base64
import binascii
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Literal

from ci_mcp.backends.local.kernel import ClearEvent, DisplayEvent, ErrorEvent, KernelEvent, StreamEvent
from ci_mcp.models import ErrorOutput, FileInfo, ImageOutput, OutputItem, TextOutput
from ci_mcp.store import FileStore

SPILL_CAP = 64 * 1024 * 1024


@dataclass
class OutputCollector:
    store: FileStore
    session_id: str
    text_limit: int
    spill_dir: Path
    items: list[OutputItem] = field(default_factory=list)
    generated: list[FileInfo] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)
    _text_kept: int = 0
    _text_total: int = 0
    _spill: BinaryIO | None = None
    _spill_path: Path | None = None
    _figures: int = 0
    _pending: list[str] = field(default_factory=list)
    _pending_chars: int = 0

    async def __call__(self, event: KernelEvent) -> None:
        if isinstance(event, StreamEvent):
            self._text(event.text, event.name)
        elif isinstance(event, DisplayEvent):
            self._display(event)
        elif isinstance(event, ErrorEvent):
            self.items.append(ErrorOutput(event.name, event.value, event.traceback))
            self._write_spill(f"{event.traceback}\n")
        elif isinstance(event, ClearEvent):
            pass

    def _text(self, text: str, kind: str) -> None:
        self._text_total += len(text)
        self._write_spill(text)
        room = self.text_limit - self._text_kept
        if room <= 0:
            return
        piece = text[:room]
        self._text_kept += len(piece)
        last = self.items[-1] if self.items else None
        out_kind: Literal["stdout", "stderr", "result"] = (
            "stderr" if kind == "stderr" else ("result" if kind == "result" else "stdout")
        )
        if isinstance(last, TextOutput) and last.kind == out_kind:
            self.items[-1] = TextOutput(last.text + piece, out_kind)
        else:
            self.items.append(TextOutput(piece, out_kind))

    def _display(self, event: DisplayEvent) -> None:
        data = event.data
        png = data.get("image/png")
        if png is not None:
            try:
                raw = base64.b64decode(png, validate=False)
            except (binascii.Error, ValueError):
                raw = b""
            if raw.startswith(b"\x89PNG"):
                self._figures += 1
                info = self.store.put_bytes(
                    f"figure-{self._figures}.png",
                    raw,
                    origin="generated",
                    session_id=self.session_id,
                    media_type="image/png",
                )
                self.generated.append(info)
                self.items.append(ImageOutput(info, raw))
                return
        svg = data.get("image/svg+xml")
        if svg is not None:
            self._figures += 1
            info = self.store.put_bytes(
                f"figure-{self._figures}.svg",
                svg.encode(),
                origin="generated",
                session_id=self.session_id,
                media_type="image/svg+xml",
            )
            self.generated.append(info)
            return
        text = data.get("text/plain")
        if text is not None:
            self._text(text if text.endswith("\n") else text + "\n", "result")

    def _write_spill(self, text: str) -> None:
        """Everything printed, in order: in memory while it fits in the result, then in a spill file."""
        if self._spill is None:
            self._pending.append(text)
            self._pending_chars += len(text)
            if self._pending_chars <= self.text_limit:
                return
            self._spill_path = self.spill_dir / f"spill-{secrets.token_hex(6)}.txt"
            self._spill = open(self._spill_path, "wb")  # noqa: SIM115 - closed in finish()
            text, self._pending = "".join(self._pending), []
        if self._spill.tell() < SPILL_CAP:
            self._spill.write(text.encode("utf-8", errors="replace")[: SPILL_CAP - self._spill.tell()])

    def finish(self, run_number: int) -> None:
        """Close the spill; keep it as a generated file only when the result text was cut."""
        spill, path = self._spill, self._spill_path
        self._spill = None
        if spill is None or path is None:
            return
        truncated_spill = spill.tell() >= SPILL_CAP
        spill.close()
        try:
            if self._text_total > self._text_kept:
                with open(path, "rb") as fh:
                    info = self.store.put_stream(
                        f"output-run{run_number}.txt",
                        fh,
                        origin="generated",
                        max_bytes=SPILL_CAP,
                        session_id=self.session_id,
                        media_type="text/plain",
                    )
                self.generated.append(info)
                note = (
                    f"Output was {self._text_total:,} characters; the result shows the first {self._text_kept:,}. "
                    f"The full output is file {info.file_id} ({info.name})"
                )
                if truncated_spill:
                    note += f", itself cut at {SPILL_CAP // (1024 * 1024)} MB"
                self.notices.append(note + ".")
        finally:
            path.unlink(missing_ok=True)
