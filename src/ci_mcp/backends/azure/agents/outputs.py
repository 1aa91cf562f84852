"""Turning a finished response into result items, and fetching the container's generated files promptly.

Files come from the answer's `container_file_citation` annotations, plus one listing of the container's files
(`source: assistant`) to catch files the agent wrote but did not cite. Cited files are always fetched (the agent
presents them as this run's results); an uncited file already fetched with the same size in an earlier run of the
session is not fetched again. Containers expire after ~20 minutes idle, so everything is
downloaded now and kept in the FileStore; a download that fails after retries becomes a notice, not an error.

Displayed images (`code_interpreter_call.outputs` of type image) are decoded from `data:` URLs; a URL that names a
container file (`…/containers/{c}/files/{f}`, or `sandbox:/mnt/data/…` found by listing) is downloaded and shown
where it was displayed; any other link is never fetched, and a notice says the image is not shown and what to ask.
"""

from __future__ import annotations

import logging
import posixpath
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from openai import AsyncOpenAI

from ci_mcp.backends.azure.agents.wire import (
    AnswerStep,
    CodeStep,
    ImageRef,
    ResponseDigest,
    decode_data_url,
    image_reference,
)
from ci_mcp.backends.azure.errors import RetryPolicy, call_with_retry, redact
from ci_mcp.errors import CiMcpError
from ci_mcp.files import keep_generated, keep_generated_now
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
    displayed: list[tuple[int, ImageRef]] = field(default_factory=list)
    """Displayed images given as container-file references: (position in `outputs`, where), fetched later."""


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
                    ref = None if url.startswith("data:") else image_reference(url, step.container_id)
                    if ref is not None:
                        out.displayed.append((len(out.outputs), ref))
                    else:
                        out.notices.append(_unshown_image_notice(url))
                    continue
                shown += 1
                info = keep_generated_now(
                    store, f"display-{shown}.png", data, session_id=session_id, media_type="image/png"
                )
                out.generated.append(info)
                out.outputs.append(ImageOutput(info, data))
        elif isinstance(step, AnswerStep) and step.text:
            out.outputs.append(TextOutput(step.text, kind="answer"))
    return out


def _unshown_image_notice(url: str) -> str:
    where = "a data: URL that could not be decoded" if url.startswith("data:") else f"a link ({redact(url)[:200]})"
    return (
        f"The code displayed an image that Azure returned as {where}, which ci-mcp does not download, so it is not "
        "shown. Ask the agent to save the figure to /mnt/data (e.g. plt.savefig('/mnt/data/figure.png')) so it "
        "comes back as a file."
    )


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
    """Download cited and uncited generated files of the run's container(s), and displayed images given as
    container-file references (shown where they were displayed), into the store."""
    wanted = _Wanted.cited_and_displayed(digest, out)
    ran_code = any(isinstance(s, CodeStep) for s in digest.steps)
    for container_id in digest.container_ids if ran_code or wanted.targets else ():
        await wanted.add_listing(client, container_id, policy, out)
    wanted.add_displayed_paths(out)
    todo = wanted.to_fetch({c.file_id for c in digest.citations}, seen)
    if todo:
        await report(f"downloading {len(todo)} generated file(s)")
    shown: list[tuple[tuple[int, int], ImageOutput]] = []
    for target in todo:
        kept = await _keep(client, target, target.file_id in wanted.display, store, session_id, policy, out)
        if kept is None:
            continue
        info, data = kept
        if target.file_id in wanted.display:
            shown.append((wanted.display[target.file_id], ImageOutput(info, data)))
        elif info.is_image:
            out.outputs.append(ImageOutput(info, data))
    for (position, _), image in sorted(shown, key=lambda p: p[0], reverse=True):
        out.outputs.insert(position, image)  # from the last: earlier positions stay valid, equal ones keep order


@dataclass
class _Wanted:
    """The container files a run may have made, and what is known of them while they are looked for."""

    targets: dict[str, _Target]
    """Container file id -> the file to fetch, with the name to keep it under."""
    display: dict[str, tuple[int, int]]
    """Container file id -> (position in outputs, order displayed) of displayed images."""
    sizes: dict[str, int] = field(default_factory=dict)
    """Container file id -> size, from the listing."""
    by_path: dict[tuple[str, str], str] = field(default_factory=dict)
    """(container id, path) -> container file id, from the listing."""

    @classmethod
    def cited_and_displayed(cls, digest: ResponseDigest, out: Collected) -> _Wanted:
        """The answer's cited files, and the displayed images referenced by container file id."""
        targets = {
            c.file_id: _Target(c.container_id, c.file_id, c.filename) for c in digest.citations if c.container_id
        }
        display: dict[str, tuple[int, int]] = {}
        for order, (position, ref) in enumerate(out.displayed):
            if ref.file_id:
                name = f"display-{len(display) + 1}.png"
                targets.setdefault(ref.file_id, _Target(ref.container_id, ref.file_id, name))
                display.setdefault(ref.file_id, (position, order))
        return cls(targets, display)

    async def add_listing(self, client: AsyncOpenAI, container_id: str, policy: RetryPolicy, out: Collected) -> None:
        """The container's files: their sizes and paths, the real names of displayed images, and every file the
        assistant wrote. A listing that fails is a notice: the cited files are still fetched."""
        try:
            listed = await call_with_retry(
                lambda: list_container_files(client, container_id),
                what="listing the container's files",
                policy=policy,
            )
        except CiMcpError as exc:
            out.notices.append(f"Could not list the container's files ({exc}); only cited files were fetched.")
            return
        for f in listed:
            self.sizes[f.id] = int(getattr(f, "bytes", 0) or 0)
            self.by_path[(container_id, str(f.path))] = f.id
            name = posixpath.basename(str(f.path))
            if f.id in self.display:  # a displayed image by id: its real name
                self.targets[f.id] = _Target(container_id, f.id, name)
            if getattr(f, "source", None) == "assistant" and f.id not in self.targets:
                self.targets[f.id] = _Target(container_id, f.id, name)

    def add_displayed_paths(self, out: Collected) -> None:
        """Displayed images referenced by path, found in the listing; one not there is a notice."""
        for order, (position, ref) in enumerate(out.displayed):
            if not ref.path:
                continue
            found = self.by_path.get((ref.container_id, ref.path))
            if found is None:
                out.notices.append(
                    f"The code displayed the image {ref.path}, which is not in the container's files, so it is not "
                    "shown. Ask the agent to save the figure to /mnt/data again."
                )
                continue
            self.targets.setdefault(found, _Target(ref.container_id, found, posixpath.basename(ref.path)))
            self.display.setdefault(found, (position, order))

    def to_fetch(self, cited: set[str], seen: dict[str, int]) -> list[_Target]:
        """Cited and displayed files always; an uncited one unless an earlier run fetched it at the same size."""
        return [
            t
            for t in self.targets.values()
            if t.file_id in cited
            or t.file_id in self.display
            or not (t.file_id in self.sizes and seen.get(t.file_id) == self.sizes[t.file_id])
        ]


async def _keep(
    client: AsyncOpenAI,
    target: _Target,
    displayed: bool,
    store: FileStore,
    session_id: str,
    policy: RetryPolicy,
    out: Collected,
) -> tuple[FileInfo, bytes] | None:
    """Download one file and keep it in the store, recorded in `out`; None when the download failed (then `out`
    has a notice saying so)."""
    try:
        data = await call_with_retry(
            lambda: _download(client, target),
            what=f"downloading '{target.name}'",
            policy=policy,
        )
    except CiMcpError as exc:
        what = "displayed an image" if displayed else f"generated '{target.name}'"
        out.notices.append(
            f"The agent {what} but it could not be downloaded ({exc}). Ask the agent to save it again, or to "
            "print its content."
        )
        return None
    media_type = guess_media_type(target.name)
    if displayed and not media_type.startswith("image/"):
        media_type = "image/png"
    name = target.name or target.file_id
    info = await keep_generated(store, name, data, session_id=session_id, media_type=media_type)
    out.seen[target.file_id] = len(data)
    out.generated.append(info)
    return info, data


async def list_container_files(client: AsyncOpenAI, container_id: str) -> list[Any]:
    """Every file in the container (`containers.files.list`, all pages)."""
    return [f async for f in client.containers.files.list(container_id)]


async def _download(client: AsyncOpenAI, target: _Target) -> bytes:
    response = await client.containers.files.content.retrieve(target.file_id, container_id=target.container_id)
    return response.read()
