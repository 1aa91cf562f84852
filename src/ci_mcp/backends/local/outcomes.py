"""How a local run ended, as its result says it: the status, whether the kernel is restarted, the notice; and
what the server itself could not do for the run (its failures and the outputs a full store did not keep).

Pure policy over values the backend reads (backend.py acts on it: restarts the kernel, adds the notices)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Literal

from ci_mcp.backends.local.kernel import Outcome
from ci_mcp.errors import CiMcpError, StorageFullError
from ci_mcp.models import RunStatus
from ci_mcp.textsafe import quote

log = logging.getLogger(__name__)

RunOutcome = Outcome | Literal["server_error"]
"""The kernel's outcome, or "server_error" when the server could not follow the run."""


@dataclass(frozen=True)
class Ending:
    status: RunStatus
    restart: bool = False
    """The kernel is restarted (its state is unusable or unknown)."""
    notice: str = ""
    only_if_restarted: bool = False
    """The notice is given only when the restart worked (a failed restart says so itself)."""


def ending(outcome: RunOutcome, timeout: float, *, returncode: int | None, oom: bool, memory_mb: int) -> Ending:
    """The ending of a run from its outcome; `returncode` and `oom` are the dead kernel's, read before a restart."""
    if outcome == "server_error":
        notice = "The kernel was restarted: variables and imports are gone; files are kept."
        return Ending("server_error", restart=True, notice=notice, only_if_restarted=True)
    if outcome == "error":
        return Ending("error")
    if outcome == "interrupted":
        return Ending(
            "timeout",
            notice=f"The run was stopped at its time limit of {timeout:g} s (KeyboardInterrupt). The kernel and its "
            "variables are kept. Make the code faster, work on a sample, or pass a larger timeout_seconds.",
        )
    if outcome == "timeout":
        return Ending(
            "timeout",
            restart=True,
            notice=f"The run exceeded its time limit of {timeout:g} s and did not respond to an interrupt, so the "
            "kernel was restarted: variables and imports are gone; files in the working directory are kept.",
        )
    if outcome == "died":
        cause = (
            f"it ran out of memory (the limit is {memory_mb} MB); work on a sample or in chunks"
            if oom
            else "common causes are running out of memory, os._exit() or a crash in native code"
        )
        return Ending(
            "kernel_died",
            restart=True,
            notice=f"The kernel process died during the run (exit code {returncode}); {cause}. A new kernel was "
            "started: variables and imports are gone; files in the working directory are kept.",
        )
    return Ending("ok")


@dataclass
class RunProblems:
    """What the server could not do for one run, for its notices: each failure said once, and the outputs not
    kept because the store is full, by cause."""

    session_id: str
    failures: list[str] = field(default_factory=list)
    lost: dict[str, list[str]] = field(default_factory=dict)
    """why -> the outputs not kept for that reason"""

    def failed(self, exc: Exception, what: str) -> None:
        """`what` the server was doing failed with `exc` (logged when it is not one of ours)."""
        if isinstance(exc, StorageFullError) and exc.lost:
            self.lost.setdefault(exc.cause, []).append(exc.lost)
            return
        if not isinstance(exc, CiMcpError):
            log.error("session %s: %s failed", self.session_id, what, exc_info=exc)
        text = str(exc) if isinstance(exc, CiMcpError) else f"{what} failed inside the server ({describe_error(exc)})"
        if text not in self.failures:
            self.failures.append(text)

    def notices(self) -> list[str]:
        lost = [
            f"Not kept: {name_list(kept)} (files the code wrote stay in its working directory). {cause}"
            for cause, kept in self.lost.items()
        ]
        return [*self.failures, *lost]


def name_list(names: list[str]) -> str:
    """Up to 20 names, quoted, and how many more."""
    shown = ", ".join(quote(n) for n in names[:20])
    return shown + (f" and {len(names) - 20} more" if len(names) > 20 else "")


def describe_error(exc: BaseException) -> str:
    """An exception in one short line, for a notice or an error message."""
    return f"{type(exc).__name__}: {exc}"[:300]
