"""One response, streamed: progress from the SSE events, a deadline, and cancellation that stops the remote run.

There is no polling in the new-agents API: `POST /openai/v1/responses` with `stream: true` holds one connection
and the events arrive as the agent works (reference §A.3).
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Any

import anyio
from openai import AsyncOpenAI
from openai.types.responses import ResponseIncludable

from ci_mcp.backends.azure.agents.wire import ResponseDigest, digest_response, progress_stage
from ci_mcp.backends.azure.errors import (
    ContainerExpiredError,
    RetryPolicy,
    call_with_retry,
    failed_response_error,
    is_container_expired,
    redact,
    translate,
)
from ci_mcp.errors import BackendUnavailableError, RunFailedError
from ci_mcp.models import ProgressCallback

log = logging.getLogger(__name__)

INCLUDE: list[ResponseIncludable] = ["code_interpreter_call.outputs"]
_TERMINAL = ("response.completed", "response.failed", "response.incomplete")
_CANCEL_BOUND = 10.0


@dataclass(frozen=True)
class StreamOutcome:
    digest: ResponseDigest | None
    """The final response; None when the deadline passed first."""
    partial_text: str
    timed_out: bool = False


class StageReporter:
    """Reports each new stage once, with a progress value that only grows (MCP progress must increase)."""

    def __init__(self, progress: ProgressCallback) -> None:
        self.progress = progress
        self.stage: str | None = None
        self.step = 0

    async def __call__(self, stage: str) -> None:
        if stage == self.stage:
            return
        self.stage = stage
        self.step += 1
        try:
            await self.progress(float(self.step), None, stage)
        except Exception:  # a progress sink must not break the run
            log.debug("progress callback failed", exc_info=True)


class _Tracker:
    def __init__(self, report: StageReporter) -> None:
        self.report = report
        self.response_id: str | None = None
        self.background = False
        """A background response runs on without its connection; only those can (and must) be cancelled."""
        self.final: Any = None
        self.error: tuple[str | None, str | None] | None = None
        self.partial_text = ""
        self.streaming = False
        """The service accepted the request and events are arriving."""
        self.produced = False
        """An output item (code, answer) was started: the run has done something, so it is not sent again."""

    async def feed(self, event: Any) -> None:
        kind = str(getattr(event, "type", ""))
        response = getattr(event, "response", None)
        if response is not None and self.response_id is None:
            self.response_id = getattr(response, "id", None)
            self.background = getattr(response, "background", None) is True
        if kind in _TERMINAL:
            self.final = response
        elif kind == "error":
            self.error = (getattr(event, "code", None), getattr(event, "message", None))
        elif kind == "response.output_item.added":
            self.produced = True
        elif kind == "response.output_text.delta":
            self.partial_text += str(getattr(event, "delta", ""))
        stage = progress_stage(kind)
        if stage is not None:
            await self.report(stage)


async def stream_response(
    client: AsyncOpenAI,
    body: dict[str, Any],
    *,
    report: StageReporter,
    deadline: float,
    policy: RetryPolicy,
) -> StreamOutcome:
    """Start the response and follow it to its end, the deadline, or cancellation. Leaving early closes the stream,
    which is what stops a streamed response on the service; only a background response is cancelled by call.

    A transient failure that the service reports inside the stream (an `error` event, e.g. `rate_limit_exceeded`)
    before the run produced anything is retried like an HTTP 429, honouring the wait it names; after output it is
    not (the code may have run), and the error says so."""
    attempt = 0
    while True:
        attempt += 1
        tracker = _Tracker(report)
        try:
            return await _follow(client, body, tracker, deadline, policy)
        except BackendUnavailableError as error:
            if not tracker.streaming:
                raise  # the start itself: call_with_retry has retried it already
            if tracker.produced:
                raise BackendUnavailableError(
                    f"{error} The failure came after the agent had started on this step (its code may have run): "
                    "check the session's state before sending the step again.",
                    retry_after=error.retry_after,
                ) from error
            wait = error.retry_after if error.retry_after is not None else policy.base_delay * (2 ** (attempt - 1))
            if attempt >= policy.attempts or wait > policy.max_wait or anyio.current_time() + wait > deadline:
                raise
            log.info("retrying the response in %.2fs: %s", wait, error)
            await policy.sleep(wait)


async def _follow(
    client: AsyncOpenAI, body: dict[str, Any], tracker: _Tracker, deadline: float, policy: RetryPolicy
) -> StreamOutcome:
    stream: Any = None
    extra_body = {k: body[k] for k in ("agent_reference", "structured_inputs") if k in body}

    async def start() -> Any:
        return await client.responses.create(
            conversation=body["conversation"],
            input=body["input"],
            include=INCLUDE,
            stream=True,
            extra_body=extra_body,
        )

    try:
        with anyio.move_on_after(max(0.0, deadline - anyio.current_time())) as scope:
            stream = await call_with_retry(
                start, what="starting the Azure run", policy=policy, idempotent=False, deadline=deadline
            )
            tracker.streaming = True
            async for event in stream:
                await tracker.feed(event)
                if tracker.final is not None or tracker.error is not None:
                    break
    except anyio.get_cancelled_exc_class():
        with anyio.CancelScope(shield=True):
            await _close(stream)
            await _cancel_remote(client, tracker)
        raise
    except BaseException as exc:
        with anyio.CancelScope(shield=True):
            await _close(stream)
        if isinstance(exc, Exception):
            raise translate(exc, "following the Azure run") from exc
        raise
    await _close(stream)
    if scope.cancelled_caught and tracker.final is None:
        with anyio.CancelScope(shield=True):
            await _cancel_remote(client, tracker)
        return StreamOutcome(None, tracker.partial_text, timed_out=True)
    return StreamOutcome(_finish(tracker), tracker.partial_text)


def _finish(tracker: _Tracker) -> ResponseDigest:
    if tracker.error is not None and tracker.final is None:
        code, message = tracker.error
        if is_container_expired(message):
            raise ContainerExpiredError(f"The code-interpreter container expired ({redact(message or '')}).")
        raise failed_response_error("failed", code, message)
    if tracker.final is None:
        raise BackendUnavailableError(
            "The Azure stream ended before the run finished (the connection dropped). Send the same step again."
        )
    digest = digest_response(tracker.final)
    if digest.status == "failed":
        raise failed_response_error(digest.status, digest.error_code, digest.error_message)
    if digest.status == "cancelled":
        raise RunFailedError("The Azure run was cancelled by the service. Send the step again.")
    return digest


async def _close(stream: Any) -> None:
    if stream is None:
        return
    with anyio.move_on_after(_CANCEL_BOUND):
        with contextlib.suppress(Exception):  # already closed or broken: nothing to do
            await stream.close()


async def _cancel_remote(client: AsyncOpenAI, tracker: _Tracker) -> None:
    """Best effort, bounded: ask Azure to stop a *background* response (the caller is already leaving). A streamed
    response stops when its connection closes (done by the caller); the cancel route refuses those with a 400."""
    if not tracker.response_id or not tracker.background:
        return
    with anyio.move_on_after(_CANCEL_BOUND):
        try:
            await client.responses.cancel(tracker.response_id)
        except Exception as exc:  # it may have finished meanwhile; cancelling is best effort
            log.info("cancelling response %s failed: %s", tracker.response_id, redact(str(exc)))
