"""Domain results to MCP content: pure functions, testable without a server.

`server.py` registers the tools and calls these; nothing here reads settings from the environment or touches a
backend. Results that carry pictures never set `structuredContent` (some clients drop image blocks otherwise); the
ids a result creates go in its `_meta` under `META_KEY`.
"""

from __future__ import annotations

import base64
import functools
import logging
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, ParamSpec

from mcp_types import (
    BlobResourceContents,
    CallToolResult,
    ContentBlock,
    EmbeddedResource,
    ImageContent,
    ResourceLink,
    TextContent,
)

from ci_mcp.errors import CiMcpError
from ci_mcp.images import preview
from ci_mcp.models import ErrorOutput, FileInfo, ImageOutput, RunResult, TextOutput
from ci_mcp.settings import Settings
from ci_mcp.textsafe import escaped, plain, quote
from ci_mcp.uploads import Progress

log = logging.getLogger("ci_mcp.server")

FILE_URI_PREFIX = "ci-mcp://files/"
FILE_URI = FILE_URI_PREFIX + "{file_id}"
MAX_INLINE_IMAGES = 8
P = ParamSpec("P")


def file_uri(file_id: str) -> str:
    return FILE_URI_PREFIX + file_id


def answers_errors(tool: Callable[P, Awaitable[CallToolResult]]) -> Callable[P, Awaitable[CallToolResult]]:
    """Every tool's one mapping of failures to results: a CiMcpError is a tool error saying what to do next; anything
    else is logged with its traceback and said plainly, never a bare protocol error."""

    @functools.wraps(tool)
    async def answered(*args: P.args, **kwargs: P.kwargs) -> CallToolResult:
        try:
            return await tool(*args, **kwargs)
        except CiMcpError as exc:
            return error_result(exc)
        except Exception as exc:
            return unexpected_result(tool.__name__, exc)

    return answered


def chunk_progress(progress: Progress) -> str:
    return (
        f"Chunk received: upload {progress.upload_id} has {progress.received:,} bytes so far (nothing is a file yet). "
        f'Send the next chunk with upload_id="{progress.upload_id}", offset={progress.received} and more=true; '
        "with the last one pass more=false and sha256 (the hex SHA-256 of the whole file)."
    )


def uploaded(info: FileInfo, given: str, data_mount: str | None) -> CallToolResult:
    """An upload's answer: its id, where the code finds it (under `data_mount`, or its working directory), and the
    name it was given when that differs from the stored one."""
    where = f"at {data_mount}/{info.name}" if data_mount else f"as {quote(info.name)} in its working directory"
    text = (
        f"Uploaded {quote(info.name)} as {info.file_id} ({info.size:,} bytes, {info.media_type}). "
        f'Pass file_ids=["{info.file_id}"] to run_code_analysis; the code will find it {where}.'
    )
    if info.name != given:
        text += (
            f" The name {quote(given)} was changed to {quote(info.name)}: a file name there cannot hold "
            "directories, control characters or more than 255 bytes, nor be '.' or '..'."
        )
    return with_ids(CallToolResult(content=[text_block(text)]), None, [info])


def saved(info: FileInfo, target: Path) -> CallToolResult:
    return CallToolResult(
        content=[text_block(f"Saved {info.file_id} ({quote(info.name)}, {info.size:,} bytes) to {target}.")]
    )


MAX_LISTED_FILES = 200


def file_list(listed: Sequence[FileInfo], session_id: str | None) -> CallToolResult:
    """One line per file (the newest `MAX_LISTED_FILES`), with its session unless the list is one session's."""
    if not listed:
        return CallToolResult(content=[text_block("No files stored yet." if not session_id else "No files.")])
    lines = [
        f"{f.file_id}  {f.origin:9}  {f.size:>12,} B  {f.media_type:28}  {quote(f.name)}"
        + (f"  (session {f.session_id})" if f.session_id and not session_id else "")
        for f in listed[-MAX_LISTED_FILES:]
    ]
    return CallToolResult(content=[text_block("\n".join(lines))])


def closed(session_id: str) -> CallToolResult:
    return CallToolResult(content=[text_block(f"Session {session_id} closed; its files are kept.")])


META_KEY = "ci-mcp/ids"


def with_ids(result: CallToolResult, session_id: str | None, files: Sequence[FileInfo]) -> CallToolResult:
    """The ids a result creates, machine-readable in `_meta` (never `structuredContent`: images must survive)."""
    ids: dict[str, Any] = {"files": [{"file_id": f.file_id, "name": f.name, "media_type": f.media_type} for f in files]}
    if session_id is not None:
        ids["session_id"] = session_id
    return result.model_copy(update={"meta": {META_KEY: ids}})


def error_result(exc: CiMcpError) -> CallToolResult:
    """The one tool error for a CiMcpError: its message, the session it concerns, and whether to retry."""
    text = f"Error: {exc}"
    if exc.session_id:
        text = f"session_id: {exc.session_id} | {text}"
    if exc.transient:
        retry_after = getattr(exc, "retry_after", None)
        text += " (temporary: try again" + (f" in {retry_after:g} s" if retry_after else " shortly") + ")"
    return CallToolResult(content=[TextContent(type="text", text=text)], is_error=True)


def unexpected_result(tool: str, exc: Exception) -> CallToolResult:
    """A failure nothing anticipated: logged with its traceback, and said plainly (never a bare protocol error)."""
    log.exception("%s failed unexpectedly", tool)
    detail = f"{type(exc).__name__}: {exc}"[:500]
    return error_result(
        CiMcpError(
            f"{tool} failed inside the server ({detail}). This is not caused by the arguments; trying again may "
            "work, and the server log has the details for the operator."
        )
    )


def link(info: FileInfo, description: str, links_ok: bool = True) -> ResourceLink | TextContent:
    if not links_ok:
        return text_block(
            f"[file {quote(info.name)}: {file_uri(info.file_id)} ({info.media_type}, {info.size:,} bytes) - "
            f"{description}; "
            f'get it with fetch_generated_file(file_id="{info.file_id}")]'
        )
    return ResourceLink(
        type="resource_link",
        uri=file_uri(info.file_id),
        name=escaped(info.name),
        mime_type=info.media_type,
        size=info.size,
        description=description,
    )


def text_block(text: str) -> TextContent:
    return TextContent(type="text", text=text)


def render_run(result: RunResult, settings: Settings, links_ok: bool = True) -> CallToolResult:
    """Ordered blocks: a summary line, the outputs as they came, then files and notices."""
    content: list[ContentBlock] = []
    images = [o for o in result.outputs if isinstance(o, ImageOutput)]
    inline = images[:MAX_INLINE_IMAGES]
    budget = max(60_000, settings.inline_image_bytes // max(1, len(inline)))
    status_text = {
        "ok": "completed",
        "error": "the code raised an error (see the traceback)",
        "timeout": "stopped at the time limit",
        "kernel_died": "the kernel died",
        "cancelled": "cancelled",
        "incomplete": "stopped before it was complete (see the notes below)",
        "server_error": "the server failed during the run (see the notices); the output up to then is below",
    }[result.status]
    content.append(text_block(f"session_id: {result.session_id} | {status_text} | {result.duration_seconds:.2f} s"))
    shown_images: set[str] = set()
    for item in result.outputs:
        if isinstance(item, TextOutput):
            prefix = {"stderr": "[stderr]\n", "code": "[code]\n"}.get(item.kind, "")
            content.append(text_block(prefix + plain(item.text)))
        elif isinstance(item, ErrorOutput):
            content.append(text_block(plain(f"Error: {item.name}: {item.value}\n{item.traceback}")))
        elif isinstance(item, ImageOutput) and item in inline:
            shown = preview(item.data, budget, settings.max_image_pixels)
            if shown.refused:
                why = f"{shown.refused}; it is kept as a file"
                content.append(text_block(f"[no picture for {quote(item.file.name)} = {item.file.file_id}: {why}]"))
                continue
            content.append(
                ImageContent(type="image", data=base64.b64encode(shown.data).decode(), mime_type=shown.media_type)
            )
            note = f" (shrunk for display; full size: fetch_generated_file {item.file.file_id})" if shown.shrunk else ""
            content.append(text_block(f"[image {quote(item.file.name)} = {item.file.file_id}{note}]"))
            shown_images.add(item.file.file_id)
    for info in result.generated_files:
        if info.file_id not in shown_images:
            content.append(link(info, f"{info.file_id}: generated by the run", links_ok))
    lines = []
    if result.generated_files:
        lines.append(
            "Generated files (fetch_generated_file): "
            + ", ".join(f"{quote(f.name)} = {f.file_id}" for f in result.generated_files)
        )
    lines.extend(result.notices)
    if lines:
        content.append(text_block("\n".join(lines)))
    return CallToolResult(
        content=content, is_error=result.status in ("timeout", "kernel_died", "cancelled", "server_error")
    )


def render_file(info: FileInfo, source: Path, settings: Settings, links_ok: bool = True) -> CallToolResult:
    header = f"{info.file_id}: {quote(info.name)} ({info.size:,} bytes, {info.media_type})"
    if info.is_image:
        if info.size > settings.max_display_bytes:
            why = f"it is over the {settings.max_display_bytes:,} bytes previewed (CI_MCP_MAX_DISPLAY_BYTES)"
        else:
            shown = preview(source.read_bytes(), settings.inline_image_bytes, settings.max_image_pixels)
            if not shown.refused:
                note = " - shrunk to fit the result; pass save_to for the full-size file" if shown.shrunk else ""
                image = ImageContent(
                    type="image", data=base64.b64encode(shown.data).decode(), mime_type=shown.media_type
                )
                return CallToolResult(content=[text_block(header + note), image])
            why = shown.refused
        # Never handed over as bytes a client would decode as a picture: only a link, and the way to save it.
        return CallToolResult(
            content=[
                text_block(f"{header} - no picture shown: {why}. Pass save_to to write the file to disk."),
                link(info, info.file_id, links_ok),
            ]
        )
    if info.is_text and info.size <= settings.inline_text_fetch_bytes:
        body = source.read_bytes().decode("utf-8", errors="replace")
        return CallToolResult(content=[text_block(header), text_block(body)])
    if info.size <= settings.inline_image_bytes:
        blob = BlobResourceContents(
            uri=file_uri(info.file_id), blob=base64.b64encode(source.read_bytes()).decode(), mime_type=info.media_type
        )
        return CallToolResult(content=[text_block(header), EmbeddedResource(type="resource", resource=blob)])
    return CallToolResult(
        content=[
            text_block(
                header + " - too large to return inline. Pass save_to (a file or directory path on the server's "
                "machine) to write it to disk."
            ),
            link(info, info.file_id, links_ok),
        ]
    )
