"""Reading the Responses API wire shapes into plain values, and composing the message sent to the agent.

Every output item and every annotation is scanned (reference §A.4: reasoning items can appear, so the last item is
not necessarily the message). SDK objects are read with `getattr`, as the openai models are lenient and fields the
service omits simply stay absent.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ci_mcp.models import FileInfo, RunRequest

MNT_DATA = "/mnt/data"


@dataclass(frozen=True)
class Citation:
    container_id: str
    file_id: str
    filename: str


@dataclass(frozen=True)
class CodeStep:
    code: str
    logs: tuple[str, ...] = ()
    image_urls: tuple[str, ...] = ()
    container_id: str = ""


@dataclass(frozen=True)
class AnswerStep:
    text: str


Step = CodeStep | AnswerStep


@dataclass(frozen=True)
class ResponseDigest:
    response_id: str
    status: str
    error_code: str | None = None
    error_message: str | None = None
    steps: tuple[Step, ...] = ()
    citations: tuple[Citation, ...] = ()
    container_ids: tuple[str, ...] = field(default=())


def _get(obj: Any, name: str) -> Any:
    if isinstance(obj, dict):
        return obj.get(name)
    return getattr(obj, name, None)


def digest_response(response: Any) -> ResponseDigest:
    steps: list[Step] = []
    citations: dict[str, Citation] = {}
    containers: list[str] = []
    for item in _get(response, "output") or []:
        kind = _get(item, "type")
        if kind == "code_interpreter_call":
            cid = _get(item, "container_id")
            if cid and cid not in containers:
                containers.append(str(cid))
            logs: list[str] = []
            urls: list[str] = []
            for out in _get(item, "outputs") or []:
                if _get(out, "type") == "logs" and _get(out, "logs"):
                    logs.append(str(_get(out, "logs")))
                elif _get(out, "type") == "image" and _get(out, "url"):
                    urls.append(str(_get(out, "url")))
            steps.append(CodeStep(str(_get(item, "code") or ""), tuple(logs), tuple(urls), str(cid or "")))
        elif kind == "message" and _get(item, "role") in (None, "assistant"):
            texts: list[str] = []
            for part in _get(item, "content") or []:
                if _get(part, "type") != "output_text":
                    continue
                texts.append(str(_get(part, "text") or ""))
                for ann in _get(part, "annotations") or []:
                    if _get(ann, "type") == "container_file_citation" and _get(ann, "file_id"):
                        c = Citation(
                            str(_get(ann, "container_id") or ""),
                            str(_get(ann, "file_id")),
                            str(_get(ann, "filename") or _get(ann, "file_id")),
                        )
                        citations.setdefault(c.file_id, c)
                        if c.container_id and c.container_id not in containers:
                            containers.append(c.container_id)
            if texts:
                steps.append(AnswerStep("".join(texts)))
    error = _get(response, "error")
    incomplete = _get(response, "incomplete_details")
    message = _get(error, "message") if error else None
    if not message and incomplete:
        message = f"reason: {_get(incomplete, 'reason')}"
    return ResponseDigest(
        response_id=str(_get(response, "id") or ""),
        status=str(_get(response, "status") or "completed"),
        error_code=_get(error, "code") if error else None,
        error_message=message,
        steps=tuple(steps),
        citations=tuple(citations.values()),
        container_ids=tuple(containers),
    )


def decode_data_url(url: str) -> bytes | None:
    """Bytes of a `data:image/png;base64,...` URL; None for anything else (remote URLs are not fetched)."""
    if not url.startswith("data:") or ";base64," not in url:
        return None
    try:
        return base64.b64decode(url.split(";base64,", 1)[1], validate=False)
    except (binascii.Error, ValueError):
        return None


@dataclass(frozen=True)
class ImageRef:
    """A displayed image that is a file in a container: by id (a container-file URL) or by its /mnt/data path."""

    container_id: str
    file_id: str | None = None
    path: str | None = None


_CONTAINER_FILE_URL = re.compile(r"/containers/([^/?#\s]+)/files/([^/?#\s]+)")


def image_reference(url: str, container_id: str) -> ImageRef | None:
    """Where a non-`data:` image URL points, when it is a container file: `…/containers/{c}/files/{f}[/content]`,
    or `sandbox:/mnt/data/…` / `/mnt/data/…` in the step's container. None for anything else (never fetched)."""
    match = _CONTAINER_FILE_URL.search(url.split("?", 1)[0])
    if match:
        return ImageRef(match.group(1), file_id=match.group(2))
    path = url.removeprefix("sandbox:")
    if container_id and path.startswith(MNT_DATA + "/") and ".." not in path.split("/"):
        return ImageRef(container_id, path=path)
    return None


_STAGES = {
    "response.queued": "queued on Azure",
    "response.created": "queued on Azure",
    "response.in_progress": "the agent is thinking",
    "response.code_interpreter_call.in_progress": "writing code",
    "response.code_interpreter_call_code.delta": "writing code",
    "response.code_interpreter_call.interpreting": "running code",
    "response.code_interpreter_call.completed": "code finished",
    "response.output_text.delta": "answering",
    "response.reasoning_summary_text.delta": "the agent is thinking",
}


def progress_stage(event_type: str) -> str | None:
    return _STAGES.get(event_type)


def compose_message(request: RunRequest, new_files: Sequence[FileInfo], all_files: Sequence[FileInfo]) -> str:
    """The user message for the agent. Given `code`, the agent is asked to run exactly that code."""
    parts: list[str] = []
    if request.code:
        parts.append(
            "Run exactly the following Python code with the code interpreter tool, without changing it, then "
            "report its output. Do not add code of your own unless it fails.\n"
            "```python\n" + request.code.rstrip("\n") + "\n```"
        )
        if request.request:
            parts.append("Then: " + request.request)
    elif request.request:
        parts.append(request.request)
    if all_files:
        listed = ", ".join(f"{MNT_DATA}/{f.name}" for f in all_files)
        label = "Files attached to this session" if len(all_files) > len(new_files) else "Attached files"
        parts.append(f"{label} (in {MNT_DATA}; list the directory if a name differs): {listed}")
    return "\n\n".join(parts)
