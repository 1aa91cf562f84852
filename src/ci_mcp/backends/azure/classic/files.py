"""Waiting until Azure has processed an upload to the classic Files API (azure-ai-agents `FileInfo.status`).

The SDK hands the status back as a `FileState` member (a str enum: `str()` of it is "FileState.UPLOADED", not
"uploaded"), or as a plain string for a state it does not know; both compare equal to the members, so the states are
compared as enum members here, never as text. `uploaded`, `pending` and `running` are waited out against a deadline,
`processed` (or no status: the field is optional) is ready, and `error`, `deleting`, `deleted` are failures.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from ci_mcp.backends.azure.errors import Sleep, redact
from ci_mcp.errors import BackendUnavailableError, InvalidInputError

if TYPE_CHECKING:
    from azure.ai.agents.models import FileInfo

log = logging.getLogger(__name__)

Clock = Callable[[], float]

FIRST_POLL_SECONDS = 0.25
LONGEST_POLL_SECONDS = 2.0


class StillProcessingError(BackendUnavailableError):
    """Azure had not finished processing the upload when the wait ended; `remote_id` can be waited on later."""

    def __init__(self, message: str, remote_id: str) -> None:
        super().__init__(message)
        self.remote_id = remote_id


async def wait_until_processed(
    first: FileInfo,
    get: Callable[[], Awaitable[FileInfo]],
    *,
    name: str,
    limit: float,
    sleep: Sleep,
    clock: Clock,
) -> FileInfo:
    """Poll `get` from `first` on until the file is processed; at most `limit` seconds measured on `clock`.

    Raises InvalidInputError when Azure could not process the file, StillProcessingError when `limit` passed first.
    """
    from azure.ai.agents.models import FileState

    waiting = (FileState.UPLOADED, FileState.PENDING, FileState.RUNNING)
    gone = (FileState.DELETING, FileState.DELETED)
    deadline = clock() + limit
    delay = FIRST_POLL_SECONDS
    remote = first
    while remote.status in waiting:
        remaining = deadline - clock()
        if remaining <= 0:
            raise StillProcessingError(
                f"Azure had not finished processing '{name}' after {limit:.0f} s (status "
                f"'{_text(remote.status)}'). The file is kept: send the step again in a minute, and ci-mcp waits "
                "for the same upload again.",
                str(remote.id),
            )
        await sleep(min(delay, remaining))
        delay = min(delay * 2, LONGEST_POLL_SECONDS)
        remote = await get()
    if remote.status == FileState.ERROR:
        details = redact(str(remote.status_details or "").strip()) or "Azure gave no detail"
        raise InvalidInputError(
            f"Azure could not process '{name}': {details}. The Code Interpreter accepts e.g. .csv, .json, .txt, "
            ".xlsx, .pdf, .png, .zip; convert the file and upload it again."
        )
    if remote.status in gone:
        raise BackendUnavailableError(
            f"Azure deleted the upload of '{name}' (status '{_text(remote.status)}') before it could be used; "
            "send the step again and ci-mcp uploads it anew."
        )
    if remote.status not in (None, FileState.PROCESSED):
        log.warning("unknown status %r for upload %s; using it as processed", remote.status, remote.id)
    return remote


def _text(status: object) -> str:
    """The wire value of a status, for messages (`FileState.PENDING` -> "pending")."""
    value = getattr(status, "value", status)
    return str(value)
