"""Classic-agents routes (azure-ai-agents 1.1.0: the OpenAI Assistants v2 wire shape under the project endpoint).

Faithful to docs/azure-api.md §B and §F: `?api-version=v1` on every route; uploads read the name from the part's
filename or a separate `filename` field; lists are cursor pages whose `last_id` is null on the empty page after the
last one (the SDK's pager ignores `has_more`); runs go queued -> in_progress -> terminal; SSE frames carry an
`event:` line and one-line `data:`, and the stream ends with `event: done` / `data: [DONE]`. Inputs uploaded with
purpose `assistants` cannot be downloaded again (400), as on the real service; generated files can.

A run plays in a background task whatever the client does with the stream (like the service, a run goes on when a
stream is dropped); the stream only relays its events. The thread's code runs in a real kernel (one container per
thread, so variables and files persist across runs). Test handles beyond `EmulatorState`:
`require_action_next_run(state)`, `live_run(state, run_id)` and `process_next_upload(state, *statuses)`.
"""

from __future__ import annotations

import asyncio
import email.parser
import email.policy
import json
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from .routing import error_response, json_body, page, route
from .state import Container, ContainerFile, EmulatorState, StoredFile, Turn

_ACTIVE = ("queued", "in_progress", "requires_action", "cancelling")
_TERMINAL = ("completed", "failed", "cancelled", "expired", "incomplete")
_PURPOSES = ("assistants", "assistants_output", "vision")
_REQUIRES_ACTION = "classic.requires_action"
_LIVE = "classic.live_runs"
_CONTAINERS = "classic.thread_containers"
_UPLOAD_SCRIPTS = "classic.upload_scripts"
_FILE_STATES = "classic.file_states"


# -- test handles ------------------------------------------------------------------------------------------------------


def require_action_next_run(state: EmulatorState, tool_name: str = "get_weather") -> None:
    """The next classic run stops in `requires_action`, asking for a client-side function call."""
    state.extra.setdefault(_REQUIRES_ACTION, deque()).append(tool_name)


@dataclass
class LiveRun:
    run_id: str
    thread_id: str
    events: asyncio.Queue[tuple[str, Any] | None] = field(default_factory=asyncio.Queue)
    cancel: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    steps: list[dict[str, Any]] = field(default_factory=list)


def process_next_upload(state: EmulatorState, *statuses: str, details: str | None = None) -> None:
    """The next classic upload answers with `statuses[0]`; each `GET /files/{id}` then moves one status on, and the
    last one stays (e.g. "uploaded", "pending", "processed"; or "running", "error" with `details` as the service's
    `status_details`). Without a script an upload is "processed" at once."""
    state.extra.setdefault(_UPLOAD_SCRIPTS, deque()).append((deque(statuses or ("processed",)), details))


def live_run(state: EmulatorState, run_id: str) -> LiveRun | None:
    live: dict[str, LiveRun] = state.extra.setdefault(_LIVE, {})
    return live.get(run_id)


# -- routes ------------------------------------------------------------------------------------------------------------


def routes(state: EmulatorState) -> list[Route]:
    api = _ClassicApi(state)
    table = [
        ("POST", "/files", api.upload_file),
        ("GET", "/files", api.list_files),
        ("GET", "/files/{file_id}", api.get_file),
        ("GET", "/files/{file_id}/content", api.file_content),
        ("DELETE", "/files/{file_id}", api.delete_file),
        ("POST", "/assistants", api.create_assistant),
        ("GET", "/assistants", api.list_assistants),
        ("GET", "/assistants/{assistant_id}", api.get_assistant),
        ("POST", "/assistants/{assistant_id}", api.update_assistant),
        ("DELETE", "/assistants/{assistant_id}", api.delete_assistant),
        ("POST", "/threads", api.create_thread),
        ("GET", "/threads/{thread_id}", api.get_thread),
        ("DELETE", "/threads/{thread_id}", api.delete_thread),
        ("POST", "/threads/{thread_id}/messages", api.create_message),
        ("GET", "/threads/{thread_id}/messages", api.list_messages),
        ("GET", "/threads/{thread_id}/messages/{message_id}", api.get_message),
        ("POST", "/threads/{thread_id}/runs", api.create_run),
        ("GET", "/threads/{thread_id}/runs", api.list_runs),
        ("GET", "/threads/{thread_id}/runs/{run_id}", api.get_run),
        ("POST", "/threads/{thread_id}/runs/{run_id}/cancel", api.cancel_run),
        ("GET", "/threads/{thread_id}/runs/{run_id}/steps", api.list_steps),
    ]
    return [route(state, method, path, handler, project_api=True) for method, path, handler in table]


def _file_object(f: StoredFile, status: str = "processed", details: str | None = None) -> dict[str, Any]:
    return {
        "object": "file",
        "id": f.id,
        "bytes": len(f.data),
        "filename": f.filename,
        "created_at": f.created_at,
        "purpose": f.purpose,
        "status": status,
        "status_details": details,
    }


def _not_found(kind: str, object_id: str) -> JSONResponse:
    return error_response(404, f"No {kind} found with id '{object_id}'.", "not_found")


def _text_of(message: dict[str, Any]) -> str:
    return "\n".join(
        str(part.get("text", {}).get("value", "")) for part in message.get("content", []) if part.get("type") == "text"
    )


def _content_parts(content: Any) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": {"value": content, "annotations": []}}]
    parts: list[dict[str, Any]] = []
    for block in content or []:
        if isinstance(block, dict) and block.get("type") == "text":
            parts.append({"type": "text", "text": {"value": str(block.get("text", "")), "annotations": []}})
        elif isinstance(block, dict) and block.get("type") == "image_file":
            parts.append({"type": "image_file", "image_file": block.get("image_file", {})})
    return parts


async def _upload(request: Request) -> tuple[str, bytes, str]:
    """(filename, bytes, purpose) of an upload. `files.upload(file=BytesIO, filename=...)` sends a `file` part with
    no filename (Starlette would hand it over as text) plus a `filename` field, so parse the raw body here."""
    raw = await request.body()
    head = f"Content-Type: {request.headers.get('content-type', '')}\r\nMIME-Version: 1.0\r\n\r\n".encode()
    parsed = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + raw)
    if not parsed.is_multipart():
        raise ValueError("not multipart")
    fields: dict[str, tuple[str | None, bytes]] = {}
    for part in parsed.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        if isinstance(name, str) and isinstance(payload, bytes):
            fields[name] = (part.get_filename(), payload)
    if "file" not in fields:
        raise ValueError("missing file part")
    part_name, data = fields["file"]
    named = fields.get("filename", (None, b""))[1].decode()
    purpose = fields.get("purpose", (None, b"assistants"))[1].decode()
    return named or part_name or "upload.bin", data, purpose


class _ClassicApi:
    def __init__(self, state: EmulatorState) -> None:
        self.state = state

    # -- files -------------------------------------------------------------------------------------------------------

    async def upload_file(self, request: Request) -> Response:
        try:
            filename, data, purpose = await _upload(request)
        except ValueError:
            return error_response(400, "A multipart 'file' part is required.", "invalid_request")
        if purpose not in _PURPOSES:
            return error_response(400, f"Invalid purpose '{purpose}'.", "invalid_purpose")
        stored = self.state.add_file(filename, data, purpose)
        scripts: deque[tuple[deque[str], str | None]] = self.state.extra.setdefault(_UPLOAD_SCRIPTS, deque())
        if scripts:
            self._file_states[stored.id] = scripts.popleft()
        return JSONResponse(self._described(stored))

    @property
    def _file_states(self) -> dict[str, tuple[deque[str], str | None]]:
        states: dict[str, tuple[deque[str], str | None]] = self.state.extra.setdefault(_FILE_STATES, {})
        return states

    def _described(self, f: StoredFile, *, advance: bool = False) -> dict[str, Any]:
        """The file object with its scripted processing status; `advance` moves the script one status on."""
        script = self._file_states.get(f.id)
        if script is None:
            return _file_object(f)
        statuses, details = script
        if advance and len(statuses) > 1:
            statuses.popleft()
        status = statuses[0]
        return _file_object(f, status, details if status == "error" else None)

    async def list_files(self, request: Request) -> Response:
        purpose = request.query_params.get("purpose")
        data = [self._described(f) for f in self.state.files.values() if purpose in (None, f.purpose)]
        return JSONResponse({"object": "list", "data": data})

    async def get_file(self, request: Request) -> Response:
        f = self.state.files.get(request.path_params["file_id"])
        if f is None:
            return _not_found("file", request.path_params["file_id"])
        return JSONResponse(self._described(f, advance=True))

    async def file_content(self, request: Request) -> Response:
        f = self.state.files.get(request.path_params["file_id"])
        if f is None:
            return _not_found("file", request.path_params["file_id"])
        if f.purpose == "assistants":
            return error_response(400, "Not allowed to download files of purpose: assistants.", "invalid_request")
        return Response(f.data, media_type="application/octet-stream")

    async def delete_file(self, request: Request) -> Response:
        f = self.state.files.pop(request.path_params["file_id"], None)
        if f is None:
            return _not_found("file", request.path_params["file_id"])
        return JSONResponse({"id": f.id, "object": "file", "deleted": True})

    # -- assistants --------------------------------------------------------------------------------------------------

    async def create_assistant(self, request: Request) -> Response:
        body = await json_body(request)
        if not body.get("model"):
            return error_response(400, "'model' is required.", "invalid_request")
        assistant = {
            "id": self.state.new_id("asst_"),
            "object": "assistant",
            "created_at": self.state.now(),
            "name": body.get("name"),
            "description": body.get("description"),
            "model": body["model"],
            "instructions": body.get("instructions"),
            "tools": body.get("tools") or [],
            "tool_resources": body.get("tool_resources") or {},
            "metadata": body.get("metadata") or {},
            "temperature": body.get("temperature", 1.0),
            "top_p": body.get("top_p", 1.0),
            "response_format": body.get("response_format", "auto"),
        }
        self.state.assistants[assistant["id"]] = assistant
        return JSONResponse(assistant)

    async def list_assistants(self, request: Request) -> Response:
        return JSONResponse(page(list(self.state.assistants.values()), request, default_order="desc"))

    async def get_assistant(self, request: Request) -> Response:
        a = self.state.assistants.get(request.path_params["assistant_id"])
        return JSONResponse(a) if a else _not_found("assistant", request.path_params["assistant_id"])

    async def update_assistant(self, request: Request) -> Response:
        a = self.state.assistants.get(request.path_params["assistant_id"])
        if a is None:
            return _not_found("assistant", request.path_params["assistant_id"])
        body = await json_body(request)
        a.update({k: v for k, v in body.items() if k in a and v is not None})
        return JSONResponse(a)

    async def delete_assistant(self, request: Request) -> Response:
        a = self.state.assistants.pop(request.path_params["assistant_id"], None)
        if a is None:
            return _not_found("assistant", request.path_params["assistant_id"])
        return JSONResponse({"id": a["id"], "object": "assistant.deleted", "deleted": True})

    # -- threads and messages ----------------------------------------------------------------------------------------

    async def create_thread(self, request: Request) -> Response:
        body = await json_body(request)
        thread: dict[str, Any] = {
            "id": self.state.new_id("thread_"),
            "object": "thread",
            "created_at": self.state.now(),
            "metadata": body.get("metadata") or {},
            "tool_resources": body.get("tool_resources") or {},
        }
        self.state.threads[thread["id"]] = thread
        self.state.messages[thread["id"]] = []
        for message in body.get("messages") or []:
            self._add_message(thread["id"], message.get("role", "user"), message.get("content", ""), message)
        return JSONResponse(thread)

    def _thread(self, request: Request) -> dict[str, Any] | Response:
        thread = self.state.threads.get(request.path_params["thread_id"])
        return thread if thread is not None else _not_found("thread", request.path_params["thread_id"])

    async def get_thread(self, request: Request) -> Response:
        thread = self._thread(request)
        return thread if isinstance(thread, Response) else JSONResponse(thread)

    async def delete_thread(self, request: Request) -> Response:
        thread_id = request.path_params["thread_id"]
        if self.state.threads.pop(thread_id, None) is None:
            return _not_found("thread", thread_id)
        self.state.messages.pop(thread_id, None)
        container_id = self.state.extra.setdefault(_CONTAINERS, {}).pop(thread_id, None)
        container = self.state.containers.pop(container_id, None) if container_id else None
        if container is not None and container.kernel is not None:
            await self.state.runner.release(container.kernel)
        return JSONResponse({"id": thread_id, "object": "thread.deleted", "deleted": True})

    def _active_run(self, thread_id: str) -> dict[str, Any] | None:
        return next(
            (r for r in self.state.runs.values() if r["thread_id"] == thread_id and r["status"] in _ACTIVE), None
        )

    def _add_message(self, thread_id: str, role: str, content: Any, body: dict[str, Any]) -> dict[str, Any]:
        now = self.state.now()
        message = {
            "id": self.state.new_id("msg_"),
            "object": "thread.message",
            "created_at": now,
            "thread_id": thread_id,
            "status": "completed",
            "incomplete_details": None,
            "completed_at": now,
            "incomplete_at": None,
            "role": role,
            "content": _content_parts(content),
            "assistant_id": None,
            "run_id": None,
            "attachments": body.get("attachments") or [],
            "metadata": body.get("metadata") or {},
        }
        self.state.messages[thread_id].append(message)
        return message

    async def create_message(self, request: Request) -> Response:
        thread = self._thread(request)
        if isinstance(thread, Response):
            return thread
        active = self._active_run(thread["id"])
        if active is not None:
            return error_response(
                400, f"Can't add messages to {thread['id']} while a run {active['id']} is active.", "invalid_request"
            )
        body = await json_body(request)
        for attachment in body.get("attachments") or []:
            if attachment.get("file_id") not in self.state.files:
                return error_response(400, f"Invalid file id '{attachment.get('file_id')}'.", "invalid_request")
        if body.get("role") not in ("user", "assistant"):
            return error_response(400, "'role' must be 'user' or 'assistant'.", "invalid_request")
        return JSONResponse(self._add_message(thread["id"], body["role"], body.get("content", ""), body))

    async def list_messages(self, request: Request) -> Response:
        thread = self._thread(request)
        if isinstance(thread, Response):
            return thread
        items = self.state.messages.get(thread["id"], [])
        run_id = request.query_params.get("run_id")
        if run_id:
            items = [m for m in items if m.get("run_id") == run_id]
        before = request.query_params.get("before")
        if before:
            ids = [m["id"] for m in items]
            items = items[: ids.index(before)] if before in ids else items
        return JSONResponse(page(items, request, default_order="desc"))

    async def get_message(self, request: Request) -> Response:
        thread = self._thread(request)
        if isinstance(thread, Response):
            return thread
        message_id = request.path_params["message_id"]
        found = next((m for m in self.state.messages.get(thread["id"], []) if m["id"] == message_id), None)
        return JSONResponse(found) if found else _not_found("message", message_id)

    # -- runs --------------------------------------------------------------------------------------------------------

    async def create_run(self, request: Request) -> Response:
        thread = self._thread(request)
        if isinstance(thread, Response):
            return thread
        body = await json_body(request)
        assistant = self.state.assistants.get(str(body.get("assistant_id")))
        if assistant is None:
            return _not_found("assistant", str(body.get("assistant_id")))
        active = self._active_run(thread["id"])
        if active is not None:
            return error_response(
                400, f"Thread {thread['id']} already has an active run {active['id']}.", "invalid_request"
            )
        for message in body.get("additional_messages") or []:
            self._add_message(thread["id"], message.get("role", "user"), message.get("content", ""), message)
        run = self._new_run(thread, assistant, body)
        live = LiveRun(run["id"], thread["id"])
        self.state.extra.setdefault(_LIVE, {})[run["id"]] = live
        player = _RunPlayer(self.state, live, thread, assistant, run)
        live.task = asyncio.ensure_future(player.play())
        if body.get("stream"):
            return StreamingResponse(self._relay(live), media_type="text/event-stream")
        return JSONResponse(dict(run))

    def _new_run(self, thread: dict[str, Any], assistant: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
        now = self.state.now()
        run = {
            "id": self.state.new_id("run_"),
            "object": "thread.run",
            "created_at": now,
            "assistant_id": assistant["id"],
            "thread_id": thread["id"],
            "status": "queued",
            "started_at": None,
            "expires_at": now + 600,
            "cancelled_at": None,
            "failed_at": None,
            "completed_at": None,
            "required_action": None,
            "last_error": None,
            "model": body.get("model") or assistant["model"],
            "instructions": body.get("instructions") or assistant.get("instructions") or "",
            "tools": body.get("tools") or assistant.get("tools") or [],
            "tool_resources": body.get("tool_resources") or {},
            "metadata": body.get("metadata") or {},
            "incomplete_details": None,
            "usage": None,
            "temperature": 1.0,
            "top_p": 1.0,
            "max_prompt_tokens": None,
            "max_completion_tokens": None,
            "truncation_strategy": {"type": "auto", "last_messages": None},
            "tool_choice": "auto",
            "response_format": "auto",
            "parallel_tool_calls": True,
        }
        self.state.runs[run["id"]] = run
        return run

    async def _relay(self, live: LiveRun) -> AsyncIterator[bytes]:
        ended = False
        try:
            while True:
                item = await live.events.get()
                if item is None:
                    ended = True
                    yield b"event: done\ndata: [DONE]\n\n"
                    return
                event, data = item
                yield f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()
                if self.state.stream_delay_seconds:
                    await asyncio.sleep(self.state.stream_delay_seconds)
        finally:
            if not ended:  # the client went away (Starlette cancels this generator on the disconnect)
                self.state.stream_dropped.set()

    def _run(self, request: Request) -> dict[str, Any] | Response:
        run = self.state.runs.get(request.path_params["run_id"])
        if run is None or run["thread_id"] != request.path_params["thread_id"]:
            return _not_found("run", request.path_params["run_id"])
        return run

    async def list_runs(self, request: Request) -> Response:
        thread = self._thread(request)
        if isinstance(thread, Response):
            return thread
        items = [r for r in self.state.runs.values() if r["thread_id"] == thread["id"]]
        return JSONResponse(page(items, request, default_order="desc"))

    async def get_run(self, request: Request) -> Response:
        run = self._run(request)
        return run if isinstance(run, Response) else JSONResponse(run)

    async def cancel_run(self, request: Request) -> Response:
        run = self._run(request)
        if isinstance(run, Response):
            return run
        if run["status"] in _TERMINAL:
            return error_response(400, f"Cannot cancel run with status '{run['status']}'.", "invalid_request")
        live = live_run(self.state, run["id"])
        container_id = self.state.extra.setdefault(_CONTAINERS, {}).get(run["thread_id"])
        container = self.state.containers.get(container_id) if container_id else None
        if container is not None and container.kernel is not None and live is not None and not live.cancel.is_set():
            await container.kernel.interrupt()
        run.update(status="cancelled", cancelled_at=self.state.now(), required_action=None)
        if live is not None:
            live.cancel.set()
        return JSONResponse(run)

    async def list_steps(self, request: Request) -> Response:
        run = self._run(request)
        if isinstance(run, Response):
            return run
        live = live_run(self.state, run["id"])
        return JSONResponse(page(live.steps if live else [], request, default_order="desc"))


# -- playing a run -----------------------------------------------------------------------------------------------------


def _chunks(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


class _RunPlayer:
    """Plays one run: status events, a Code Interpreter step whose code runs in the thread's kernel, the answer."""

    def __init__(
        self,
        state: EmulatorState,
        live: LiveRun,
        thread: dict[str, Any],
        assistant: dict[str, Any],
        run: dict[str, Any],
    ) -> None:
        self.state = state
        self.live = live
        self.thread = thread
        self.assistant = assistant
        self.run = run

    def emit(self, event: str, data: dict[str, Any]) -> None:
        self.live.events.put_nowait((event, json.loads(json.dumps(data))))

    def set_status(self, status: str, **fields: Any) -> None:
        self.run.update(status=status, **fields)
        self.emit(f"thread.run.{status}", self.run)

    async def play(self) -> None:
        try:
            await self._play()
        except Exception as exc:  # an emulator bug must show up as a failed run, not a hung stream
            if self.run["status"] not in _TERMINAL:
                self.set_status(
                    "failed", failed_at=self.state.now(), last_error={"code": "server_error", "message": repr(exc)}
                )
        finally:
            if self.live.cancel.is_set() and self.run["status"] == "cancelled":
                self.emit("thread.run.cancelled", self.run)
            self.live.events.put_nowait(None)

    async def _play(self) -> None:
        self.emit("thread.run.created", self.run)
        self.emit("thread.run.queued", self.run)
        self.set_status("in_progress", started_at=self.state.now())
        failure = self.state.faults.take_run_failure()
        if failure is not None:
            self.set_status(
                "failed", failed_at=self.state.now(), last_error={"code": failure.code, "message": failure.message}
            )
            return
        pending_actions: deque[str] = self.state.extra.get(_REQUIRES_ACTION, deque())
        if pending_actions:
            await self._require_action(pending_actions.popleft())
            return
        messages = self.state.messages[self.thread["id"]]
        user = [m for m in messages if m["role"] == "user"]
        text = _text_of(user[-1]) if user else ""
        container = self._container()
        names = self._attach_files(container)
        turn = self.state.model(text, names)
        self.state.model_calls.append((text, names))
        generated: list[StoredFile] = []
        images: list[StoredFile] = []
        logs = error = ""
        if turn.code is not None:
            outcome = await self._code_step(container, turn.code)
            if outcome is None:
                return  # cancelled
            logs, error, images, generated = outcome
        await self._answer(turn, logs, error, images, generated)
        if self.live.cancel.is_set():
            return
        reason = self.state.faults.take_incomplete()
        if reason is not None:
            self.set_status("incomplete", incomplete_at=self.state.now(), incomplete_details={"reason": reason})
            return
        self.set_status(
            "completed",
            completed_at=self.state.now(),
            usage={"prompt_tokens": len(text) // 4, "completion_tokens": 42, "total_tokens": len(text) // 4 + 42},
        )

    async def _require_action(self, tool_name: str) -> None:
        call = {
            "id": self.state.new_id("call_"),
            "type": "function",
            "function": {"name": tool_name, "arguments": "{}"},
        }
        self.run["required_action"] = {"type": "submit_tool_outputs", "submit_tool_outputs": {"tool_calls": [call]}}
        self.set_status("requires_action")
        # The service ends the stream here and waits for tool outputs (or a cancel, or expiry).

    def _container(self) -> Container:
        mapping: dict[str, str] = self.state.extra.setdefault(_CONTAINERS, {})
        container = self.state.containers.get(mapping.get(self.thread["id"], ""))
        if container is None:
            container = self.state.new_container()
            mapping[self.thread["id"]] = container.id
        return container

    def _attach_files(self, container: Container) -> list[str]:
        ids: list[str] = []
        for resources in (
            self.assistant.get("tool_resources"),
            self.thread.get("tool_resources"),
            self.run.get("tool_resources"),
        ):
            ids.extend((resources or {}).get("code_interpreter", {}).get("file_ids") or [])
        for message in self.state.messages[self.thread["id"]]:
            ids.extend(a.get("file_id") for a in message.get("attachments") or [] if a.get("file_id"))
        names: list[str] = []
        for file_id in dict.fromkeys(ids):
            stored = self.state.files.get(file_id)
            if stored is None:
                continue
            if file_id not in container.attached:
                self.state.attach(container, stored)
            names.append(stored.filename)
        return names

    def _step(self, kind: str, details: dict[str, Any]) -> dict[str, Any]:
        step = {
            "id": self.state.new_id("step_"),
            "object": "thread.run.step",
            "created_at": self.state.now(),
            "run_id": self.run["id"],
            "assistant_id": self.assistant["id"],
            "thread_id": self.thread["id"],
            "type": kind,
            "status": "in_progress",
            "cancelled_at": None,
            "completed_at": None,
            "expires_at": self.run["expires_at"],
            "failed_at": None,
            "last_error": None,
            "step_details": details,
            "usage": None,
            "metadata": {},
        }
        self.live.steps.append(step)
        self.emit("thread.run.step.created", step)
        self.emit("thread.run.step.in_progress", step)
        return step

    def _step_delta(self, step: dict[str, Any], call_id: str, code: str, outputs: list[dict[str, Any]]) -> None:
        call: dict[str, Any] = {
            "index": 0,
            "type": "code_interpreter",
            "code_interpreter": {"input": code, "outputs": outputs},
        }
        if not code and not outputs:
            call["id"] = call_id
        delta = {"step_details": {"type": "tool_calls", "tool_calls": [call]}}
        self.emit("thread.run.step.delta", {"id": step["id"], "object": "thread.run.step.delta", "delta": delta})

    async def _code_step(
        self, container: Container, code: str
    ) -> tuple[str, str, list[StoredFile], list[StoredFile]] | None:
        call_id = self.state.new_id("call_")
        ci: dict[str, Any] = {"input": "", "outputs": []}
        step = self._step(
            "tool_calls",
            {"type": "tool_calls", "tool_calls": [{"id": call_id, "type": "code_interpreter", "code_interpreter": ci}]},
        )
        self._step_delta(step, call_id, "", [])
        for piece in _chunks(code, 64):
            self._step_delta(step, call_id, piece, [])
        ci["input"] = code
        result, changed = await self.state.run_code_unless_cancelled(container, code, self.live.cancel)
        if result is None:
            step.update(status="cancelled", cancelled_at=self.state.now())
            return None
        outputs: list[dict[str, Any]] = []
        if result.logs:
            outputs.append({"type": "logs", "logs": result.logs})
        images = [
            self.state.add_file(f"image-{n + 1}.png", png, "assistants_output") for n, png in enumerate(result.images)
        ]
        outputs.extend({"type": "image", "image": {"file_id": f.id}} for f in images)
        self._step_delta(step, call_id, "", outputs)
        ci["outputs"] = outputs
        step.update(status="completed", completed_at=self.state.now())
        self.emit("thread.run.step.completed", step)
        generated = [self._publish(container, cf) for cf in changed]
        error = f"{result.error[0]}: {result.error[1]}" if result.error else ""
        return result.logs, error, images, generated

    def _publish(self, container: Container, cf: ContainerFile) -> StoredFile:
        data = self.state.container_path(container, cf).read_bytes()
        return self.state.add_file(cf.path, data, "assistants_output")

    async def _answer(
        self, turn: Turn, logs: str, error: str, images: list[StoredFile], generated: list[StoredFile]
    ) -> None:
        names = [f.filename.removeprefix("/mnt/data/") for f in generated]
        text = turn.answer.format_map(
            {"stdout": logs, "logs": logs.rstrip(), "error": error, "files": ", ".join(names)}
        )
        annotations: list[dict[str, Any]] = []
        for f, name in zip(generated, names, strict=True):
            sandbox = f"sandbox:/mnt/data/{name}"
            link = f"[{name}]({sandbox})"
            text += ("\n" if text else "") + link
            start = text.rindex(sandbox)
            annotations.append(
                {
                    "type": "file_path",
                    "text": sandbox,
                    "start_index": start,
                    "end_index": start + len(sandbox),
                    "file_path": {"file_id": f.id},
                }
            )
        message = {
            "id": self.state.new_id("msg_"),
            "object": "thread.message",
            "created_at": self.state.now(),
            "thread_id": self.thread["id"],
            "status": "in_progress",
            "incomplete_details": None,
            "completed_at": None,
            "incomplete_at": None,
            "role": "assistant",
            "content": [],
            "assistant_id": self.assistant["id"],
            "run_id": self.run["id"],
            "attachments": [],
            "metadata": {},
        }
        step = self._step(
            "message_creation", {"type": "message_creation", "message_creation": {"message_id": message["id"]}}
        )
        self.state.messages[self.thread["id"]].append(message)
        self.emit("thread.message.created", message)
        self.emit("thread.message.in_progress", message)
        parts: list[dict[str, Any]] = [{"type": "image_file", "image_file": {"file_id": f.id}} for f in images]
        for n, piece in enumerate(_chunks(text, 24)):
            delta: dict[str, Any] = {
                "content": [{"index": len(parts), "type": "text", "text": {"value": piece, "annotations": []}}]
            }
            if n == 0:
                delta["role"] = "assistant"
            self.emit("thread.message.delta", {"id": message["id"], "object": "thread.message.delta", "delta": delta})
        parts.append({"type": "text", "text": {"value": text, "annotations": annotations}})
        message.update(status="completed", completed_at=self.state.now(), content=parts)
        self.emit("thread.message.completed", message)
        step.update(status="completed", completed_at=self.state.now())
        self.emit("thread.run.step.completed", step)
