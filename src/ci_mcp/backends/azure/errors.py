"""The one boundary where openai / azure-core / azure-identity exceptions of both Azure backends become
`CiMcpError`s, and where transient failures are retried (one `RetryPolicy`, built from the settings once).

Both SDKs' own retries are switched off (`max_retries=0`, `retry_total=0`), so every retry happens here, honouring
`Retry-After` (and the finer `retry-after-ms`) within a bound, and the caller's deadline. Messages can reach the
calling model: they carry the service's words (redacted of URL queries and bearer tokens), never a secret.
"""

from __future__ import annotations

import email.utils
import logging
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import anyio
import openai
from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ServiceRequestError,
    ServiceResponseError,
)

from ci_mcp.errors import BackendUnavailableError, CiMcpError, InvalidInputError, NotFoundError, RunFailedError
from ci_mcp.settings import Settings

log = logging.getLogger(__name__)

T = TypeVar("T")

_TRANSIENT = frozenset({408, 429, 500, 502, 503, 504})
_TRANSIENT_FOR_POST = frozenset({408, 429, 503})
"""A POST answered 500/502/504 may have been applied (a second response would run the code twice)."""
_URL_QUERY = re.compile(r"(https?://[^\s?\"']+)\?[^\s\"']*")
_BEARER = re.compile(r"(?i)bearer\s+[a-z0-9._\-~+/=]+")
_EXPIRED = re.compile(r"(?i)container[^.]*expired")

AUTH_HELP = (
    "Sign in with `az login` (Azure CLI), or set AZURE_TENANT_ID, AZURE_CLIENT_ID and AZURE_CLIENT_SECRET for a "
    "service principal, or run where a managed identity is assigned (set AZURE_CLIENT_ID for a user-assigned one). "
    "The identity needs the 'Azure AI User' role on the Foundry project. `ci-mcp doctor` checks the setup."
)


class AzureAuthError(CiMcpError):
    """No usable credential, or Azure refused it. Retrying does not help until the operator fixes the sign-in."""


class ContainerExpiredError(RunFailedError):
    """The conversation's code-interpreter container expired (idle too long); its Python state is gone."""


def redact(text: str) -> str:
    """Drop URL query strings (SAS tokens live there) and bearer tokens from text that may reach the model."""
    return _BEARER.sub("Bearer ***", _URL_QUERY.sub(r"\1?…", text))


def is_container_expired(message: str | None) -> bool:
    return bool(message and _EXPIRED.search(message))


def retry_after_seconds(headers: Mapping[str, str] | None, *, now: float | None = None) -> float | None:
    """The server's requested wait: `retry-after-ms`, `x-ms-retry-after-ms`, or `Retry-After` (seconds or a date)."""
    if not headers:
        return None
    lowered = {k.lower(): v for k, v in headers.items()}
    for name in ("retry-after-ms", "x-ms-retry-after-ms"):
        if name in lowered:
            try:
                return max(0.0, float(lowered[name]) / 1000.0)
            except ValueError:
                pass
    value = lowered.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def _status_and_headers(exc: BaseException) -> tuple[int | None, Mapping[str, str] | None]:
    if isinstance(exc, openai.APIStatusError):
        return exc.status_code, exc.response.headers
    if isinstance(exc, HttpResponseError) and exc.response is not None:
        headers: Mapping[str, str] | None = getattr(exc.response, "headers", None)
        return exc.status_code, headers
    return None, None


def service_message(exc: BaseException) -> tuple[str | None, str]:
    """(code, message) from the service's error body, redacted; the exception text as a fallback."""
    code: str | None = None
    message: str | None = None
    if isinstance(exc, openai.APIStatusError):
        body: Any = exc.body
        err = body.get("error", body) if isinstance(body, dict) else None
        if isinstance(err, dict):
            code = _str(err.get("code"))
            message = _str(err.get("message"))
        message = message or _str(getattr(exc, "message", None))
    elif isinstance(exc, HttpResponseError):
        if exc.error is not None:
            code, message = exc.error.code, exc.error.message
        message = message or exc.reason
    return code, redact(message or str(exc) or type(exc).__name__)


def is_stream_error(exc: BaseException) -> bool:
    """An `error` event inside a stream: the openai SDK raises a bare `APIError` (no HTTP status, since the
    response itself was 200) whose body is the event's nested `error` object."""
    return isinstance(exc, openai.APIError) and not isinstance(exc, openai.APIStatusError | openai.APIConnectionError)


def stream_error_body(exc: BaseException) -> tuple[str | None, str | None]:
    """(code, message) of a mid-stream error event (`{"type":"error","error":{"code","message"}}`)."""
    body: Any = getattr(exc, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict):
            return _str(inner.get("code")), _str(inner.get("message")) or _str(getattr(exc, "message", None))
    return _str(getattr(exc, "code", None)), _str(getattr(exc, "message", None))


def _str(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def translate(exc: BaseException, what: str) -> CiMcpError:
    """Map an SDK or transport exception raised while `what` (e.g. 'creating the conversation') to a CiMcpError."""
    if isinstance(exc, CiMcpError):
        return exc
    if isinstance(exc, ClientAuthenticationError | openai.AuthenticationError):
        first_line = redact(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
        return AzureAuthError(
            f"Azure authentication failed while {what}: {first_line[:300]}. {AUTH_HELP} "
            "Retrying will not help until then."
        )
    if is_stream_error(exc):
        code, message = stream_error_body(exc)
        return failed_response_error("failed", code, message)
    status, headers = _status_and_headers(exc)
    if status is not None:
        code, message = service_message(exc)
        detail = f"{code}: {message}" if code else message
        if status == 403:
            return AzureAuthError(
                f"Azure denied access while {what} (403, {detail}). The signed-in identity needs the "
                "'Azure AI User' role on the Foundry project."
            )
        if status == 400 and is_container_expired(message):
            return ContainerExpiredError(f"The code-interpreter container expired ({detail}).")
        if status == 404:
            return NotFoundError(
                f"Azure does not know an object needed for {what} (404, {detail}). Check "
                "AZURE_AI_PROJECT_ENDPOINT and the model deployment name."
            )
        if status in _TRANSIENT or status >= 500:
            retry_after = retry_after_seconds(headers)
            hint = f" Try again in {retry_after:.0f} s." if retry_after is not None else " Try again shortly."
            return BackendUnavailableError(
                f"Azure is busy or failing ({status}) while {what}: {detail}.{hint}", retry_after=retry_after
            )
        return InvalidInputError(f"Azure rejected the request while {what} ({status}, {detail}).")
    if isinstance(exc, openai.APIConnectionError | ServiceRequestError | ServiceResponseError):
        return BackendUnavailableError(
            f"Could not reach the Azure project endpoint while {what} ({type(exc).__name__}). "
            "Check the network and AZURE_AI_PROJECT_ENDPOINT, then try again."
        )
    return CiMcpError(f"Unexpected failure while {what}: {type(exc).__name__}: {redact(str(exc))[:500]}")


def is_retryable(exc: BaseException, *, idempotent: bool) -> bool:
    if isinstance(exc, ClientAuthenticationError | openai.AuthenticationError):
        return False
    status, _ = _status_and_headers(exc)
    if status is not None:
        return status in (_TRANSIENT if idempotent else _TRANSIENT_FOR_POST) or (idempotent and status >= 500)
    if isinstance(exc, ServiceRequestError):  # the request never left: always safe to send again
        return True
    return idempotent and isinstance(exc, openai.APIConnectionError | ServiceResponseError)


Sleep = Callable[[float], Awaitable[None]]


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 5
    """Tries in all, the first included."""
    base_delay: float = 0.5
    """Backoff without Retry-After: base, 2*base, 4*base, ..."""
    max_wait: float = 30.0
    """The longest single wait; a longer Retry-After is handed back to the caller as BackendUnavailableError."""
    sleep: Sleep = field(default=anyio.sleep, compare=False, repr=False)
    """How a wait is waited: tests pass one that records the wait and returns at once, so no test sleeps."""

    @classmethod
    def from_settings(cls, settings: Settings) -> RetryPolicy:
        """The policy both Azure backends use: CI_MCP_AZURE_MAX_RETRIES and CI_MCP_AZURE_MAX_RETRY_WAIT_SECONDS."""
        return cls(attempts=settings.azure_max_retries + 1, max_wait=settings.azure_max_retry_wait_seconds)


async def call_with_retry(
    fn: Callable[[], Awaitable[T]],
    *,
    what: str,
    policy: RetryPolicy,
    idempotent: bool = True,
    deadline: float | None = None,
    sleep: Sleep | None = None,
) -> T:
    """Await `fn()`; retry transient failures (honouring Retry-After); raise a CiMcpError otherwise.

    `deadline` is an `anyio.current_time()` value: a wait that would cross it is not started. `sleep` (default: the
    policy's) is what waits between tries.
    """
    attempt = 0
    while True:
        attempt += 1
        try:
            return await fn()
        except Exception as exc:
            error = translate(exc, what)
            if not is_retryable(exc, idempotent=idempotent) or attempt >= policy.attempts:
                raise error from exc
            wait = error.retry_after if isinstance(error, BackendUnavailableError) else None
            if wait is None:
                wait = policy.base_delay * (2 ** (attempt - 1))
            if wait > policy.max_wait or (deadline is not None and anyio.current_time() + wait > deadline):
                raise error from exc
            log.info("retrying in %.2fs (%s): %s", wait, what, error)
            await (sleep or policy.sleep)(wait)


_TRY_AGAIN_IN = re.compile(r"(?i)try again in (\d+(?:\.\d+)?) ?s")


def failed_response_error(status: str, code: str | None, message: str | None) -> CiMcpError:
    """The tool error for a response that ended `failed` or `incomplete`, carrying the service's message."""
    text = redact(message or "no message given")
    if is_container_expired(text):
        return ContainerExpiredError(f"The code-interpreter container expired ({text}).")
    if code == "rate_limit_exceeded":
        match = _TRY_AGAIN_IN.search(text)
        return BackendUnavailableError(
            f"The Azure run failed: rate_limit_exceeded: {text} The model deployment is out of quota for the "
            "moment: wait and send the same step again (the operator can raise the deployment's quota).",
            retry_after=float(match.group(1)) if match else None,
        )
    label = f"{code}: {text}" if code else text
    if status == "incomplete":
        return RunFailedError(
            f"The Azure run stopped incomplete ({label}). Ask for a smaller step, or split the analysis."
        )
    hint = " This is usually transient: send the same step once more." if code == "server_error" else ""
    return RunFailedError(f"The Azure run failed: {label}.{hint}")
