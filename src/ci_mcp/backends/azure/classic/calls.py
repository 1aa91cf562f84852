"""Calling the async azure-ai-agents SDK through the shared error boundary (`azure/errors.py`).

azure-core's own retry policy is off for this client (`retry_total=0`), so every retry happens in
`azure/errors.call_with_retry`, honouring `Retry-After` against the run's deadline with the backend's injectable
sleep.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from ci_mcp.backends.azure.errors import RetryPolicy, Sleep, call_with_retry, failed_response_error
from ci_mcp.errors import CiMcpError

T = TypeVar("T")

__all__ = ["RetryPolicy", "Sleep", "call_sdk", "failed_run_error"]


async def call_sdk(
    fn: Callable[[], Awaitable[T]],
    *,
    what: str,
    sleep: Sleep,
    policy: RetryPolicy,
    idempotent: bool = True,
    deadline: float | None = None,
) -> T:
    """Await the SDK call `fn()`; retry transient failures; raise a CiMcpError.

    `deadline` is an `anyio.current_time()` value: a retry wait that would cross it is not started.
    """
    return await call_with_retry(fn, what=what, policy=policy, idempotent=idempotent, deadline=deadline, sleep=sleep)


def failed_run_error(code: str | None, message: str | None) -> CiMcpError:
    """The tool error for a run that ended `failed`, carrying its `last_error` (same wording as the azure backend)."""
    return failed_response_error("failed", code, message)
