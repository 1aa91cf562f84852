"""The error tree shared by every module.

Three planes (docs/architecture.md, section 3): the user's code raising is *data* in a RunResult, not an exception;
a failure the calling model can act on is a `CiMcpError`; bad configuration is a `ConfigError` at start-up.
Messages are read by a language model or an operator: they say what to do next and never carry secrets.
"""

from __future__ import annotations


class CiMcpError(Exception):
    """A failure the calling model can act on. The message says what to try next."""

    transient: bool = False
    session_id: str | None = None
    """The session the failed call ran in, when there was one: the model can continue it."""


class NotFoundError(CiMcpError):
    """An id (file or session) that the server does not know."""


class InvalidInputError(CiMcpError):
    """Arguments that cannot be used as given (missing, contradictory, malformed)."""


class PathNotAllowedError(CiMcpError):
    """A path outside the allowed roots, or a refused kind of file."""


class FileTooLargeError(CiMcpError):
    """An upload or inline content over the configured size limit."""


class StorageFullError(CiMcpError):
    """The file store's quota is reached, or the disk holding the data directory is full.

    `lost` names what was not kept; `cause` is the message without it, so several losses can be reported once."""

    def __init__(self, message: str, *, lost: str = "", cause: str = "") -> None:
        super().__init__(message)
        self.lost = lost
        self.cause = cause or message


class RunTimeoutError(CiMcpError):
    """A run that exceeded its time limit and could not be brought back with its state."""


class RunFailedError(CiMcpError):
    """A remote run (Azure) that ended failed, cancelled or incomplete."""


class CapacityError(CiMcpError):
    """Too many live sessions."""


class BackendUnavailableError(CiMcpError):
    """Transient upstream trouble that persisted after retries."""

    transient = True

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ConfigError(Exception):
    """Bad configuration found at start-up; the message names the setting to change."""
