"""What a local session keeps in its session record between server runs (`ci_mcp.sessions`)."""

from __future__ import annotations

from dataclasses import dataclass

from ci_mcp.sessions import TextState


@dataclass(frozen=True)
class LocalSessionState(TextState):
    workspace: str = ""
    """The session's workspace directory (the kernel's /mnt/data), under the store's workspaces directory."""
