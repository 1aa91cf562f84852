"""The user message a classic run starts from: the request, the code to run as given, and the attached files."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

RUN_EXACTLY = (
    "Run exactly the following Python code with the code interpreter, unchanged and in a single call; do not "
    "rewrite, fix or extend it. Then report briefly what it printed or produced."
)


@dataclass(frozen=True)
class Attached:
    name: str
    remote_id: str


def fence_for(code: str) -> str:
    """A backtick fence longer than any backtick run inside the code."""
    fence = "```"
    while fence in code:
        fence += "`"
    return fence


def compose_message(request: str | None, code: str | None, attached: Sequence[Attached]) -> str:
    parts: list[str] = []
    if request and request.strip():
        parts.append(request.strip())
    if code is not None and code.strip():
        fence = fence_for(code)
        parts.append(f"{RUN_EXACTLY}\n\n{fence}python\n{code.rstrip()}\n{fence}")
    if attached:
        listing = "; ".join(f"'{a.name}' (file id {a.remote_id})" for a in attached)
        parts.append(
            f"Files attached to this message, in /mnt/data: {listing}. If a file is not under its name, "
            "it is under its file id."
        )
    return "\n\n".join(parts)
