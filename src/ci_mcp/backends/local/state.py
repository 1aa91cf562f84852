"""What a local session keeps in its session record between server runs (`ci_mcp.sessions`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class LocalSessionState:
    workspace: str = ""
    """The session's workspace directory (the kernel's /mnt/data), under the store's workspaces directory."""

    @classmethod
    def load(cls, raw: Mapping[str, object]) -> LocalSessionState:
        workspace = raw.get("workspace")
        return cls(workspace if isinstance(workspace, str) else "")

    def dump(self) -> dict[str, object]:
        return {"workspace": self.workspace}
