"""Turns kernel events into the run's ordered outputs: merged text, images stored as files, errors as data.

Text is kept in the result up to `text_limit` characters; all of it (up to a hard cap) is also written to a
spill file, which becomes a generated file when the result had to be cut, so nothing the code printed is lost.
"""

from __future__ import annotations

import base64
import binascii
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Literal

import anyio

from ci_mcp.backends.local.kernel import ClearEvent, DisplayEvent, ErrorEvent, KernelEvent, StreamEvent
from ci_mcp.files import keep_generated_now
from ci_mcp.models import ErrorOutput, FileInfo, ImageOutput, OutputItem, TextOutput
from ci_mcp.store import FileStore

SPILL_CAP = 64 * 1024 * 1024
ERROR_ROOM = 4000
"""Characters the first error of a run may show even when the output before it used up the text limit."""
MAX_PAYLOADS_PER_RUN = 200
"""Pictures (displayed, or files read for a preview) kept per run, however small: each is a stored file."""
PICTURES = {"image/png": "png", "image/jpeg": "jpg"}
"""Displayed pictures kept as figures, best first (a bundle's first one wins). Whether the bytes really are that
picture is checked where they are shown (`ci_mcp.images.preview`), never trusted from the media type."""
TEXT_FALLBACKS = ("text/markdown", "text/html", "application/json", "text/latex")
"""Shown as the result's text, in this order, when a bundle's text/plain is missing or only a placeholder."""
_PLACEHOLDER = re.compile(r"<[\w.]+ object(?: at 0x[0-9a-f]+)?>")


@dataclass
class OutputCollector:
    store: FileStore
    session_id: str
    text_limit: int
    spill_dir: Path
    max_payload: int = 16 * 1024 * 1024
    """Largest display payload kept, and largest picture file read for a preview."""
    max_run_payloads: int = 64 * 1024 * 1024
    """All display payloads (pictures, SVG) and picture files read for a preview in one run, together."""
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
    _payload_bytes: int = 0
    _kept_payloads: int = 0
    _errors: int = 0
    _error_cut: bool = False
    _dropped: dict[str, int] = field(default_factory=dict)

    async def __call__(self, event: KernelEvent) -> None:
        if isinstance(event, StreamEvent):
            self._text(event.text, event.name)
        elif isinstance(event, DisplayEvent):
            if event.data.keys() - {"text/plain"}:
                # Decoding and storing a payload blocks: off the event loop (events stay in order: we wait).
                await anyio.to_thread.run_sync(self._display, event)
            else:
                self._display(event)
        elif isinstance(event, ErrorEvent):
            self._error(event)
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

    def _error(self, event: ErrorEvent) -> None:
        """An error is output like any other: the same limit, the whole of it in the spill file. The first error of a
        run always gets some room, even after the output used up the limit: it is what the model needs most."""
        full = event.traceback or f"{event.name}: {event.value}"
        self._text_total += len(full) + 1
        self._write_spill(full + "\n")
        room = self.text_limit - self._text_kept
        if not self._errors:
            room = max(room, min(self.text_limit, ERROR_ROOM))
        self._errors += 1
        if room <= 0:
            return
        traceback = _cut(event.traceback, room)
        # The traceback repeats the value: when it is shown whole, so may the value be; else the value gets a part.
        value = _cut(event.value, room if traceback == event.traceback else max(200, room // 4))
        name = _cut(event.name, 200)
        if (name, value, traceback) != (event.name, event.value, event.traceback):
            self._error_cut = True
            self._text_kept += min(len(full), len(traceback) + len(value))
        else:
            self._text_kept += len(full) + 1
        self.items.append(ErrorOutput(name, value, traceback))

    def _display(self, event: DisplayEvent) -> None:
        """Keep a bundle's picture (or SVG) as a figure file, or else show its best text; all within the caps."""
        data = event.data
        for media_type, ext in PICTURES.items():
            encoded = data.get(media_type)
            if encoded is None or not self._admit(len(encoded) * 3 // 4, f"displayed {media_type}"):
                continue
            try:
                raw = base64.b64decode(encoded, validate=False)
            except (binascii.Error, ValueError):
                raw = b""
            if not raw:
                self._drop(f"displayed {media_type} payload(s) were not valid base64 and were dropped")
                continue
            self._figures += 1
            info = keep_generated_now(
                self.store, f"figure-{self._figures}.{ext}", raw, session_id=self.session_id, media_type=media_type
            )
            self.generated.append(info)
            self.items.append(ImageOutput(info, raw))
            return  # a kept figure stands for its bundle (its text/plain is only "<Figure size ...>")
        svg = data.get("image/svg+xml")
        if svg is not None and self._admit(len(svg), "displayed image/svg+xml"):
            self._figures += 1
            info = keep_generated_now(
                self.store,
                f"figure-{self._figures}.svg",
                svg.encode("utf-8", errors="replace"),
                session_id=self.session_id,
                media_type="image/svg+xml",
            )
            self.generated.append(info)
            return
        text = data.get("text/plain")
        if text is None or _PLACEHOLDER.fullmatch(text.strip()):
            # `display(HTML(...))`, `display(JSON(...))`: the plain text says only "<... object>"; the model reads
            # the markup instead, within the text limit like any output.
            for media_type in TEXT_FALLBACKS:
                rich = data.get(media_type)
                if rich is not None and self._admit(len(rich), f"displayed {media_type}", counted=False):
                    text = rich
                    break
        if text is not None:
            self._text(text if text.endswith("\n") else text + "\n", "result")

    def picture_file(self, info: FileInfo, read: Callable[[], bytes]) -> None:
        """A picture file the run wrote: shown like a displayed one when it is within the caps."""
        if info.size > self.max_payload:
            self._drop(
                f"picture file(s) over {self.max_payload:,} bytes got no preview; they are kept as files "
                "(operators: CI_MCP_MAX_DISPLAY_BYTES)"
            )
        elif self._payload_bytes + info.size > self.max_run_payloads:
            self._drop(
                f"picture file(s) got no preview once the run's pictures reached {self.max_run_payloads:,} bytes; "
                "they are kept as files (operators: CI_MCP_MAX_DISPLAY_BYTES_PER_RUN)"
            )
        elif self._kept_payloads >= MAX_PAYLOADS_PER_RUN:
            self._drop(
                f"picture file(s) got no preview after the run's first {MAX_PAYLOADS_PER_RUN} pictures; they are "
                "kept as files"
            )
        else:
            self._payload_bytes += info.size
            self._kept_payloads += 1
            self.items.append(ImageOutput(info, read()))

    def _admit(self, size: int, what: str, *, counted: bool = True) -> bool:
        """Whether a payload of `size` bytes may be kept: under the per-payload cap and, when `counted`, within
        what is left of the run's total (which it then uses up). Refusals are summed up in `finish`."""
        if size > self.max_payload:
            self._drop(
                f"{what} over {self.max_payload:,} bytes each were dropped (operators: CI_MCP_MAX_DISPLAY_BYTES)"
            )
            return False
        if counted and self._kept_payloads >= MAX_PAYLOADS_PER_RUN:
            self._drop(
                f"{what} were dropped after the run's first {MAX_PAYLOADS_PER_RUN} pictures; display fewer figures "
                "(e.g. subplots in one figure)"
            )
            return False
        if counted and self._payload_bytes + size > self.max_run_payloads:
            self._drop(
                f"{what} were dropped once the run's display payloads reached {self.max_run_payloads:,} bytes "
                "(operators: CI_MCP_MAX_DISPLAY_BYTES_PER_RUN); display fewer or smaller figures, or save them"
            )
            return False
        if counted:
            self._payload_bytes += size
            self._kept_payloads += 1
        return True

    def _drop(self, reason: str) -> None:
        self._dropped[reason] = self._dropped.get(reason, 0) + 1

    def _write_spill(self, text: str) -> None:
        """Everything printed, in order: in memory while it fits in the result, then in a spill file."""
        if self._spill is None:
            self._pending.append(text)
            self._pending_chars += len(text)
            if self._pending_chars <= self.text_limit:
                return
            self._open_spill()
            return
        self._spill_write(text)

    def _open_spill(self) -> None:
        self._spill_path = self.spill_dir / f"spill-{secrets.token_hex(6)}.txt"
        self._spill = open(self._spill_path, "wb")  # noqa: SIM115 - closed in finish()
        text, self._pending = "".join(self._pending), []
        self._spill_write(text)

    def _spill_write(self, text: str) -> None:
        assert self._spill is not None
        if self._spill.tell() < SPILL_CAP:
            self._spill.write(text.encode("utf-8", errors="replace")[: SPILL_CAP - self._spill.tell()])

    @property
    def finish_blocks(self) -> bool:
        """Whether `finish` touches the disk (a spill file to close and maybe keep): else it is a few list appends,
        not worth a worker thread."""
        return self._spill is not None or self._error_cut

    def finish(self, run_number: int) -> None:
        """Close the spill; keep it as a generated file only when the result text was cut. Sum up dropped payloads."""
        for reason, count in self._dropped.items():
            self.notices.append(f"{count} {reason}.")
        self._dropped.clear()
        if self._spill is None and self._error_cut:
            self._open_spill()
        spill, path = self._spill, self._spill_path
        self._spill = None
        if spill is None or path is None:
            return
        truncated_spill = spill.tell() >= SPILL_CAP
        spill.close()
        try:
            if self._text_total > self._text_kept or self._error_cut:
                with open(path, "rb") as fh:
                    info = keep_generated_now(
                        self.store,
                        f"output-run{run_number}.txt",
                        fh,
                        session_id=self.session_id,
                        media_type="text/plain",
                        max_bytes=SPILL_CAP,
                    )
                self.generated.append(info)
                note = (
                    f"Output was {self._text_total:,} characters; the result shows {self._text_kept:,} of them. "
                    f"The full output is file {info.file_id} ({info.name})"
                )
                if truncated_spill:
                    note += f", itself cut at {SPILL_CAP // (1024 * 1024)} MB"
                self.notices.append(note + ".")
        finally:
            path.unlink(missing_ok=True)


def _cut(text: str, room: int) -> str:
    """`text` if it fits in `room` characters, else its head and tail around a marker saying what was cut."""
    if len(text) <= room:
        return text
    marker = "\n[... {} characters cut; the full text is in the run's output file ...]\n"
    keep = max(0, room - len(marker) - 12)
    head, tail = keep // 2, keep - keep // 2
    cut = len(text) - head - tail
    return text[:head] + marker.format(f"{cut:,}") + (text[-tail:] if tail else "")
