"""Turning a finished response into result items, and fetching the container's generated files promptly.

Files come from the answer's `container_file_citation` annotations, plus one listing of the container's files
(`source: assistant`) to catch files the agent wrote but did not cite. Cited files are always fetched (the agent
presents them as this run's results); an uncited file already fetched with the same size in an earlier run of the
session is not fetched again. Containers expire after ~20 minutes idle, so everything is
downloaded now and kept in the FileStore; a download that fails after retries becomes a notice, not an error.
"""

from __future__ import annotations

import logging
import posixpath
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
from openai import AsyncOpenAI

from ci_mcp.backends.azure.errors import RetryPolicy, call_with_retry
from ci_mcp.backends.azure.wire import AnswerStep, CodeStep, ResponseDigest, decode_data_url
from ci_mcp.errors import CiMcpError
from ci_mcp.models import ErrorOutput, FileInfo, ImageOutput, OutputItem, TextOutput
from ci_mcp.store import FileStore, guess_media_type

log = logging.getLogger(__name__)


@dataclass
class Collected:
    outputs: list[OutputItem] = field(default_factory=list)
    generated: list[FileInfo] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)
    seen: dict[str, int] = field(default_factory=dict)
    """Container file id -> size, of every file fetched (merged into the session state)."""


@dataclass(frozen=True)
class _Target:
    container_id: str
    file_id: str
    name: str


def _normalise(code: str | None) -> str:
    return "\n".join(line.rstrip() for line in (code or "").strip().splitlines())


_TRACEBACK = re.compile(r"^.*Traceback \(most recent call last\).*$", re.MULTILINE)
_DASHES = re.compile(r"-{20,}\n?$")
_ERROR_LINE = re.compile(r"^([A-Za-z_][\w.]*)(?::\s?(.*))?$")
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def split_logs(logs: str) -> list[OutputItem]:
    """The code interpreter's logs as stdout, with a Python traceback (when the code raised) as an ErrorOutput,
    so a failing step looks the same as on the local backend."""
    text = _ANSI.sub("", logs)
    match = _TRACEBACK.search(text)
    if match is None:
        return [TextOutput(logs, kind="stdout")]
    before = _DASHES.sub("", text[: match.start()])
    trace = text[match.start() :].rstrip()
    name, value = "Error", ""
    for line in reversed(trace.splitlines()):
        found = _ERROR_LINE.match(line.strip())
        if found and line and not line.startswith(" "):
            name, value = found.group(1), found.group(2) or ""
            break
    items: list[OutputItem] = [TextOutput(before, kind="stdout")] if before.strip() else []
    items.append(ErrorOutput(name, value, trace))
    return items


def render_steps(digest: ResponseDigest, given_code: str | None, store: FileStore, session_id: str) -> Collected:
    """Answer text, the agent's code (when it is not exactly the code given), logs, and displayed images."""
    out = Collected()
    wanted = _normalise(given_code)
    shown = 0
    for step in digest.steps:
        if isinstance(step, CodeStep):
            if step.code and (not given_code or _normalise(step.code) != wanted):
                out.outputs.append(TextOutput(step.code, kind="code"))
            for logs in step.logs:
                out.outputs.extend(split_logs(logs))
            for url in step.image_urls:
                data = decode_data_url(url)
                if data is None:
                    continue
                shown += 1
                info = store.put_bytes(
                    f"display-{shown}.png", data, origin="generated", session_id=session_id, media_type="image/png"
                )
                out.generated.append(info)
                out.outputs.append(ImageOutput(info, data))
        elif isinstance(step, AnswerStep) and step.text:
            out.outputs.append(TextOutput(step.text, kind="answer"))
    return out


async def fetch_files(
    client: AsyncOpenAI,
    digest: ResponseDigest,
    *,
    store: FileStore,
    session_id: str,
    seen: dict[str, int],
    policy: RetryPolicy,
    report: Callable[[str], Awaitable[None]],
    out: Collected,
) -> None:
    """Download cited and uncited generated files of the run's container(s) into the store."""
    targets = {c.file_id: _Target(c.container_id, c.file_id, c.filename) for c in digest.citations if c.container_id}
    sizes: dict[str, int] = {}
    ran_code = any(isinstance(s, CodeStep) for s in digest.steps)
    for container_id in digest.container_ids if ran_code or targets else ():
        try:
            for f in await call_with_retry(
                lambda cid=container_id: list_container_files(client, cid),  # type: ignore[misc]
                what="listing the container's files",
                policy=policy,
            ):
                sizes[f.id] = int(getattr(f, "bytes", 0) or 0)
                if getattr(f, "source", None) == "assistant" and f.id not in targets:
                    targets[f.id] = _Target(container_id, f.id, posixpath.basename(str(f.path)))
        except CiMcpError as exc:
            out.notices.append(f"Could not list the container's files ({exc}); only cited files were fetched.")
    cited = {c.file_id for c in digest.citations}
    todo = [
        t
        for t in targets.values()
        if t.file_id in cited or not (t.file_id in sizes and seen.get(t.file_id) == sizes[t.file_id])
    ]
    if todo:
        await report(f"downloading {len(todo)} generated file(s)")
    for target in todo:
        try:
            data = await call_with_retry(
                lambda t=target: _download(client, t),  # type: ignore[misc]
                what=f"downloading '{target.name}'",
                policy=policy,
            )
        except CiMcpError as exc:
            out.notices.append(
                f"The agent generated '{target.name}' but it could not be downloaded ({exc}). Ask the agent to "
                "save it again, or to print its content."
            )
            continue
        info = await anyio.to_thread.run_sync(
            lambda t=target, d=data: store.put_bytes(  # type: ignore[misc]
                t.name or t.file_id, d, origin="generated", session_id=session_id, media_type=guess_media_type(t.name)
            )
        )
        out.seen[target.file_id] = len(data)
        out.generated.append(info)
        if info.is_image:
            out.outputs.append(ImageOutput(info, data))


async def list_container_files(client: AsyncOpenAI, container_id: str) -> list[Any]:
    """Every file in the container (`containers.files.list`, all pages)."""
    return [f async for f in client.containers.files.list(container_id)]


async def _download(client: AsyncOpenAI, target: _Target) -> bytes:
    response = await client.containers.files.content.retrieve(target.file_id, container_id=target.container_id)
    return response.read()
