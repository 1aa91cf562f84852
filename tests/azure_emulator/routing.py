"""Shared HTTP plumbing for route modules: the route wrapper (log, auth, faults), error bodies, SSE framing.

Route modules build their routes with `route(state, "POST", "/openai/v1/responses", handler)`; the path is relative
to the project endpoint (`/api/projects/<p>`), and "<METHOD> <path>" is the route key used by faults and the log.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .state import EmulatorState, RequestRecord

Handler = Callable[[Request], Awaitable[Response]]

_DEFAULT_MESSAGES = {
    400: ("invalid_request_error", "Bad request."),
    401: ("invalid_request_error", "Access denied due to invalid subscription key or wrong API endpoint."),
    404: ("invalid_request_error", "Not found."),
    408: ("timeout", "The request timed out."),
    429: ("rate_limit_exceeded", "Rate limit is exceeded. Try again in 1 seconds."),
    500: ("server_error", "The server had an error while processing your request. Sorry about that!"),
    502: ("server_error", "Bad gateway."),
    503: ("server_error", "The service is temporarily unable to process your request."),
}


def error_body(status: int, message: str | None = None, code: str | None = None) -> dict[str, Any]:
    """The error envelope both Azure (`{error:{code,message}}`) and OpenAI (`{error:{message,type,param,code}}`)
    clients parse."""
    default_code, default_message = _DEFAULT_MESSAGES.get(status, ("error", "Error."))
    return {
        "error": {
            "message": message or default_message,
            "type": "invalid_request_error" if status < 500 else "server_error",
            "param": None,
            "code": code or default_code,
        }
    }


def error_response(
    status: int, message: str | None = None, code: str | None = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(error_body(status, message, code), status_code=status, headers=headers)


def retry_after_headers(seconds: float) -> dict[str, str]:
    return {"Retry-After": str(max(1, math.ceil(seconds))), "retry-after-ms": str(int(seconds * 1000))}


def sse_frame(event: dict[str, Any], with_event_line: bool = True) -> bytes:
    """One SSE frame: optional `event:` line and one-line JSON `data:`."""
    head = f"event: {event['type']}\n" if with_event_line else ""
    return (head + "data: " + json.dumps(event, separators=(",", ":")) + "\n\n").encode()


def route(state: EmulatorState, method: str, path: str, handler: Handler, *, project_api: bool = False) -> Route:
    """Wrap `handler`: log the request, check the bearer token, serve a queued fault, require api-version=v1 on
    project-API routes (`project_api=True`), then call the handler."""
    key = f"{method} {path}"
    prefix_len = len(f"/api/projects/{state.project}")

    async def endpoint(request: Request) -> Response:
        headers = {k.lower(): v for k, v in request.headers.items()}
        auth = headers.get("authorization", "")
        if auth:
            headers["authorization"] = auth.split(" ", 1)[0]
        state.log(
            RequestRecord(
                method=method,
                path=request.url.path[prefix_len:],
                route=key,
                query=dict(request.query_params),
                headers=headers,
                at=time.monotonic(),
            )
        )
        if state.request_latency_seconds:
            await asyncio.sleep(state.request_latency_seconds)
        if state.require_auth:
            scheme, _, token = auth.partition(" ")
            if scheme.lower() != "bearer" or token not in state.accepted_tokens:
                return error_response(401, code="PermissionDenied" if token else "Unauthorized")
        fault = state.faults.take(key)
        if fault is not None:
            hdrs = retry_after_headers(fault.retry_after) if fault.retry_after is not None else {}
            body = fault.body or error_body(fault.status)
            return JSONResponse(body, status_code=fault.status, headers=hdrs)
        if project_api and request.query_params.get("api-version") != "v1":
            return error_response(400, "Missing or unsupported api-version; expected api-version=v1.", "BadRequest")
        return await handler(request)

    return Route(path, endpoint, methods=[method], name=key)


async def json_body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw:
        return {}
    data = json.loads(raw)
    return data if isinstance(data, dict) else {}


async def upload_form(request: Request) -> tuple[str, bytes, str]:
    """(filename, bytes, purpose) of a multipart upload; the name comes from the part's filename or a separate
    `filename` form field (azure-ai-agents' `files.upload(file=BytesIO, filename=...)`)."""
    async with request.form() as form:  # closes the parts' temporary files
        part = form.get("file")
        if part is None or isinstance(part, str):
            raise ValueError("missing file part")
        data = await part.read()
        field_name = form.get("filename")
        filename = field_name if isinstance(field_name, str) and field_name else (part.filename or "upload.bin")
        purpose = form.get("purpose")
    return filename, data, purpose if isinstance(purpose, str) else "assistants"


def page(
    items: list[dict[str, Any]], request: Request, default_limit: int = 20, default_order: str = "asc"
) -> dict[str, Any]:
    """An OpenAI-style list page honouring limit/order/after. `last_id` is null on an empty page, so azure-core
    pagers (which ignore has_more) stop after the last page with one extra empty GET, as the real service does."""
    q = request.query_params
    limit = max(1, min(100, int(q.get("limit", default_limit))))
    ordered = list(reversed(items)) if q.get("order", default_order) == "desc" else list(items)
    after = q.get("after")
    if after:
        ids = [i["id"] for i in ordered]
        ordered = ordered[ids.index(after) + 1 :] if after in ids else []
    chunk = ordered[:limit]
    return {
        "object": "list",
        "data": chunk,
        "first_id": chunk[0]["id"] if chunk else None,
        "last_id": chunk[-1]["id"] if chunk else None,
        "has_more": len(ordered) > limit,
    }
