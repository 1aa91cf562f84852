"""From a finished classic run to ci-mcp outputs: text, images and generated files, in the order they appeared.

`plan_outputs` (pure) lays out what to show from the run's steps and messages; `OutputCollector` downloads every
file the plan refers to (each once), keeps a local copy in the store (Azure forgets them, and inputs cannot be read
back at all) and rewrites the agent's `sandbox:/mnt/data/...` links into `ci-mcp://files/<id>` links.
"""

from __future__ import annotations

import posixpath
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

from ci_mcp.backends.azure.classic.stream import RunTracker, as_list, as_str, dig
from ci_mcp.errors import CiMcpError
from ci_mcp.files import keep_generated
from ci_mcp.models import FileInfo, ImageOutput, OutputItem, TextOutput
from ci_mcp.store import FileStore, guess_media_type


@dataclass(frozen=True)
class CodeText:
    code: str


@dataclass(frozen=True)
class LogText:
    text: str


@dataclass(frozen=True)
class ImageRef:
    remote_id: str


@dataclass(frozen=True)
class FileLink:
    """A `file_path` annotation: the text the agent wrote (a sandbox path) and the Azure file it stands for."""

    text: str
    remote_id: str
    name: str


@dataclass(frozen=True)
class AnswerText:
    text: str
    links: tuple[FileLink, ...] = ()


Planned = CodeText | LogText | ImageRef | AnswerText


def plan_outputs(
    tracker: RunTracker, listed: Sequence[Mapping[str, object]], *, show_code: bool = True
) -> list[Planned]:
    """Steps and assistant messages in stream order; anything the stream missed comes after."""
    plan = _Plan(tracker, listed, show_code)
    for kind, entry_id in tracker.order:
        if kind == "step":
            plan.step(entry_id)
        elif entry_id in plan.messages:
            plan.message(entry_id)
    plan.missed()
    return plan.items


class _Plan:
    """The plan as it is laid out: what has been placed, and the steps and messages there are to place."""

    def __init__(self, tracker: RunTracker, listed: Sequence[Mapping[str, object]], show_code: bool) -> None:
        self.messages, self.listed_ids = _assistant_messages(tracker, listed)
        self.calls = tracker.calls_in_order()
        self.show_code = show_code
        self.placed_steps: set[str] = set()
        self.placed_messages: set[str] = set()
        self.items: list[Planned] = []

    def step(self, step_id: str) -> None:
        """Each tool call of the step: its code (when shown), its logs, its images."""
        self.placed_steps.add(step_id)
        for call in self.calls:
            if call.step_id != step_id:
                continue
            if self.show_code and call.code:
                self.items.append(CodeText(call.code))
            self.items.extend(LogText(text) for text in call.logs)
            self.items.extend(ImageRef(image_id) for image_id in call.image_ids)

    def message(self, message_id: str) -> None:
        self.placed_messages.add(message_id)
        message = self.messages.get(message_id)
        if message is not None and dig(message, "role") in ("assistant", None):
            self.items.extend(_message_items(message))

    def missed(self) -> None:
        """What the stream did not order: the remaining steps, then the remaining listed messages."""
        for call in self.calls:
            if call.step_id not in self.placed_steps:
                self.step(call.step_id)
        for message_id in self.listed_ids:
            if message_id not in self.placed_messages:
                self.message(message_id)


def _assistant_messages(
    tracker: RunTracker, listed: Sequence[Mapping[str, object]]
) -> tuple[dict[str, Mapping[str, object]], list[str]]:
    """The streamed messages by id, updated by the listed assistant messages; and those listed ids, in order."""
    by_id: dict[str, Mapping[str, object]] = dict(tracker.messages)
    listed_ids: list[str] = []
    for message in listed:
        message_id = as_str(dig(message, "id"))
        if message_id and dig(message, "role") == "assistant":
            by_id[message_id] = message
            listed_ids.append(message_id)
    return by_id, listed_ids


def _message_items(message: Mapping[str, object]) -> list[Planned]:
    items: list[Planned] = []
    for part in as_list(dig(message, "content")):
        kind = dig(part, "type")
        if kind == "text":
            value = as_str(dig(part, "text", "value")) or ""
            links: list[FileLink] = []
            for note in as_list(dig(part, "text", "annotations")):
                file_id = as_str(dig(note, "file_path", "file_id"))
                if dig(note, "type") == "file_path" and file_id:
                    text = as_str(dig(note, "text")) or ""
                    links.append(FileLink(text, file_id, _name_from_sandbox_path(text, file_id)))
            if value or links:
                items.append(AnswerText(value, tuple(links)))
        elif kind == "image_file":
            file_id = as_str(dig(part, "image_file", "file_id"))
            if file_id:
                items.append(ImageRef(file_id))
    return items


def _name_from_sandbox_path(text: str, fallback: str) -> str:
    path = text.removeprefix("sandbox:")
    name = posixpath.basename(path.rstrip("/"))
    return name or fallback


def sniff_media_type(data: bytes, name: str) -> str:
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return guess_media_type(name)


_EXTENSIONS = {"image/png": ".png", "image/jpeg": ".jpg", "image/gif": ".gif", "image/webp": ".webp"}

FetchBytes = Callable[[str], Awaitable[bytes]]
FetchName = Callable[[str], Awaitable[str | None]]


@dataclass(frozen=True)
class Collected:
    outputs: tuple[OutputItem, ...]
    generated: tuple[FileInfo, ...]
    notices: tuple[str, ...]
    remote_ids: Mapping[str, str]
    """Azure file id -> ci-mcp file id, for every file downloaded."""


class OutputCollector:
    """Turns a plan into outputs, downloading each referenced Azure file once into the store."""

    def __init__(self, store: FileStore, session_id: str, fetch_bytes: FetchBytes, fetch_name: FetchName) -> None:
        self._store = store
        self._session_id = session_id
        self._fetch_bytes = fetch_bytes
        self._fetch_name = fetch_name
        self._files: dict[str, tuple[FileInfo, bytes]] = {}
        self._failed: set[str] = set()
        self._shown: set[str] = set()
        self._notices: list[str] = []
        self._outputs: list[OutputItem] = []

    async def collect(self, plan: Sequence[Planned]) -> Collected:
        names = {link.remote_id: link.name for item in plan if isinstance(item, AnswerText) for link in item.links}
        for item in plan:
            if isinstance(item, CodeText):
                self._outputs.append(TextOutput(item.code, kind="code"))
            elif isinstance(item, LogText):
                self._outputs.append(TextOutput(item.text, kind="stdout"))
            elif isinstance(item, ImageRef):
                await self._show_image(item.remote_id, names.get(item.remote_id))
            else:
                await self._answer(item)
        return Collected(
            outputs=tuple(self._outputs),
            generated=tuple(info for info, _ in self._files.values()),
            notices=tuple(self._notices),
            remote_ids={remote: info.file_id for remote, (info, _) in self._files.items()},
        )

    async def _answer(self, item: AnswerText) -> None:
        text = item.text
        for link in item.links:
            got = await self._download(link.remote_id, link.name)
            if got is not None and link.text:
                text = text.replace(link.text, f"ci-mcp://files/{got[0].file_id}")
        if text:
            self._outputs.append(TextOutput(text, kind="answer"))
        for link in item.links:
            got = self._files.get(link.remote_id)
            if got is not None and got[0].is_image:
                await self._show_image(link.remote_id, link.name)

    async def _show_image(self, remote_id: str, name: str | None) -> None:
        if remote_id in self._shown:
            return
        got = await self._download(remote_id, name)
        if got is None:
            return
        self._shown.add(remote_id)
        info, data = got
        if info.is_image:
            self._outputs.append(ImageOutput(file=info, data=data))

    async def _download(self, remote_id: str, name: str | None) -> tuple[FileInfo, bytes] | None:
        if remote_id in self._files:
            return self._files[remote_id]
        if remote_id in self._failed:
            return None
        try:
            data = await self._fetch_bytes(remote_id)
            if name is None:
                name = _clean_name(await self._fetch_name(remote_id)) or remote_id
        except CiMcpError as exc:
            self._failed.add(remote_id)
            self._notices.append(
                f"The generated file {name or remote_id} could not be downloaded from Azure ({exc}). Azure keeps "
                "generated files only for a while, so it cannot be fetched later either: run the step again to "
                "regenerate it."
            )
            return None
        media_type = sniff_media_type(data, name)
        if "." not in name and media_type in _EXTENSIONS:
            name += _EXTENSIONS[media_type]
        info = await keep_generated(self._store, name, data, session_id=self._session_id, media_type=media_type)
        self._files[remote_id] = (info, data)
        return info, data


def _clean_name(remote_name: str | None) -> str | None:
    if not remote_name:
        return None
    return posixpath.basename(remote_name.replace("\\", "/").rstrip("/")) or None
