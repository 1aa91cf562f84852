"""New-agents routes (azure-ai-projects 2.x project API + the project's OpenAI v1 surface).

Faithful to docs/azure-api.md §A and §F: `?api-version=v1` on project routes only; `agent_reference` (or the
legacy `agent`) and `structured_inputs` read from the responses body; SSE frames `event:` + one-line `data:` with
`type` and `sequence_number`, ending after `response.completed` / `response.failed` (no [DONE]); container files
listed newest first with cursor pagination; `cfile_` ids only downloadable through the container route.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from .routing import error_response, json_body, page, route, sse_frame, upload_form
from .state import Container, ContainerFile, Conversation, EmulatorState, ResponseRecord, StoredFile, StreamError

V1 = "/openai/v1"
_PLACEHOLDER = re.compile(r"^\{\{\s*([A-Za-z0-9_\-]+)\s*\}\}$")
_TERMINAL = ("completed", "failed", "incomplete", "cancelled")


def routes(state: EmulatorState) -> list[Route]:
    api = _NewAgentsApi(state)
    r = [
        ("POST", "/agents/{agent_name}/versions", api.create_version, True),
        ("GET", "/agents/{agent_name}/versions", api.list_versions, True),
        ("GET", "/agents/{agent_name}/versions/{version}", api.get_version, True),
        ("DELETE", "/agents/{agent_name}/versions/{version}", api.delete_version, True),
        ("GET", "/agents/{agent_name}", api.get_agent, True),
        ("DELETE", "/agents/{agent_name}", api.delete_agent, True),
        ("GET", "/deployments/{name}", api.get_deployment, True),
        ("POST", f"{V1}/files", api.create_file, False),
        ("GET", f"{V1}/files/{{file_id}}", api.get_file, False),
        ("GET", f"{V1}/files/{{file_id}}/content", api.file_content, False),
        ("DELETE", f"{V1}/files/{{file_id}}", api.delete_file, False),
        ("POST", f"{V1}/conversations", api.create_conversation, False),
        ("GET", f"{V1}/conversations/{{conversation_id}}", api.get_conversation, False),
        ("DELETE", f"{V1}/conversations/{{conversation_id}}", api.delete_conversation, False),
        ("GET", f"{V1}/conversations/{{conversation_id}}/items", api.conversation_items, False),
        ("POST", f"{V1}/responses", api.create_response, False),
        ("GET", f"{V1}/responses/{{response_id}}", api.get_response, False),
        ("POST", f"{V1}/responses/{{response_id}}/cancel", api.cancel_response, False),
        ("GET", f"{V1}/containers/{{container_id}}", api.get_container, False),
        ("DELETE", f"{V1}/containers/{{container_id}}", api.delete_container, False),
        ("GET", f"{V1}/containers/{{container_id}}/files", api.list_container_files, False),
        ("POST", f"{V1}/containers/{{container_id}}/files", api.add_container_file, False),
        ("GET", f"{V1}/containers/{{container_id}}/files/{{file_id}}", api.get_container_file, False),
        ("GET", f"{V1}/containers/{{container_id}}/files/{{file_id}}/content", api.container_file_content, False),
    ]
    return [route(state, method, path, handler, project_api=project) for method, path, handler, project in r]


def _file_object(f: StoredFile) -> dict[str, Any]:
    return {
        "id": f.id,
        "object": "file",
        "bytes": len(f.data),
        "created_at": f.created_at,
        "filename": f.filename,
        "purpose": f.purpose,
        "status": "processed",
    }


def _container_object(c: Container) -> dict[str, Any]:
    return {
        "id": c.id,
        "object": "container",
        "name": c.id,
        "status": "expired" if c.expired else "running",
        "created_at": c.created_at,
        "last_active_at": c.last_active_at,
        "expires_after": {"anchor": "last_active_at", "minutes": 20},
        "memory_limit": "1g",
    }


def _container_file_object(cf: ContainerFile) -> dict[str, Any]:
    return {
        "id": cf.id,
        "object": "container.file",
        "container_id": cf.container_id,
        "bytes": cf.size,
        "created_at": cf.created_at,
        "path": cf.path,
        "source": cf.source,
    }


def _expired() -> JSONResponse:
    return error_response(400, "Container is expired.", "container_expired")


class _NewAgentsApi:
    def __init__(self, state: EmulatorState) -> None:
        self.state = state

    # -- agents (project API) ---------------------------------------------------------------------------------------

    async def create_version(self, request: Request) -> Response:
        name = request.path_params["agent_name"]
        body = await json_body(request)
        definition = body.get("definition")
        if not isinstance(definition, dict) or definition.get("kind") != "prompt" or not definition.get("model"):
            return error_response(400, "definition with kind 'prompt' and a model is required.", "invalid_payload")
        versions = self.state.agents.setdefault(name, [])
        number = str(len(versions) + 1 if not versions else int(versions[-1]["version"]) + 1)
        version = {
            "object": "agent.version",
            "id": f"{name}:{number}",
            "name": name,
            "version": number,
            "description": body.get("description"),
            "metadata": body.get("metadata") or {},
            "created_at": self.state.now(),
            "definition": definition,
            "status": "active",
        }
        versions.append(version)
        return JSONResponse(version)

    async def list_versions(self, request: Request) -> Response:
        versions = self.state.agents.get(request.path_params["agent_name"])
        if not versions:
            return error_response(404, f"Agent '{request.path_params['agent_name']}' not found.", "NotFound")
        return JSONResponse(page(versions, request, default_order="desc"))

    def _version(self, request: Request) -> dict[str, Any] | None:
        versions = self.state.agents.get(request.path_params["agent_name"], [])
        return next((v for v in versions if v["version"] == request.path_params["version"]), None)

    async def get_version(self, request: Request) -> Response:
        version = self._version(request)
        if version is None:
            return error_response(404, "Agent version not found.", "NotFound")
        return JSONResponse(version)

    async def delete_version(self, request: Request) -> Response:
        version = self._version(request)
        if version is None:
            return error_response(404, "Agent version not found.", "NotFound")
        self.state.agents[version["name"]].remove(version)
        return JSONResponse(
            {"object": "agent.version.deleted", "name": version["name"], "version": version["version"], "deleted": True}
        )

    async def get_agent(self, request: Request) -> Response:
        name = request.path_params["agent_name"]
        versions = self.state.agents.get(name)
        if not versions:
            return error_response(404, f"Agent '{name}' not found.", "NotFound")
        return JSONResponse({"object": "agent", "id": name, "name": name, "versions": {"latest": versions[-1]}})

    async def delete_agent(self, request: Request) -> Response:
        name = request.path_params["agent_name"]
        if self.state.agents.pop(name, None) is None:
            return error_response(404, f"Agent '{name}' not found.", "NotFound")
        return JSONResponse({"object": "agent.deleted", "name": name, "deleted": True})

    async def get_deployment(self, request: Request) -> Response:
        name = request.path_params["name"]
        if name not in self.state.deployments:
            return error_response(404, f"Deployment '{name}' not found.", "NotFound")
        return JSONResponse(
            {
                "type": "ModelDeployment",
                "name": name,
                "modelName": self.state.deployments[name],
                "modelVersion": "2025-04-14",
                "modelPublisher": "OpenAI",
                "capabilities": {"chat_completion": "true"},
                "sku": {"name": "GlobalStandard", "capacity": 50},
            }
        )

    # -- files -------------------------------------------------------------------------------------------------------

    async def create_file(self, request: Request) -> Response:
        try:
            filename, data, purpose = await upload_form(request)
        except ValueError:
            return error_response(400, "A multipart 'file' part is required.", "invalid_request")
        if purpose != "assistants":
            return error_response(400, f"Invalid purpose '{purpose}' for code interpreter files.", "invalid_purpose")
        return JSONResponse(_file_object(self.state.add_file(filename, data, purpose)))

    def _stored(self, request: Request) -> StoredFile | None:
        return self.state.files.get(request.path_params["file_id"])

    async def get_file(self, request: Request) -> Response:
        f = self._stored(request)
        return JSONResponse(_file_object(f)) if f else error_response(404, "No such File object.", "not_found")

    async def file_content(self, request: Request) -> Response:
        f = self._stored(request)
        if f is None:
            return error_response(404, "No such File object.", "not_found")
        return Response(f.data, media_type="application/octet-stream")

    async def delete_file(self, request: Request) -> Response:
        f = self.state.files.pop(request.path_params["file_id"], None)
        if f is None:
            return error_response(404, "No such File object.", "not_found")
        return JSONResponse({"id": f.id, "object": "file", "deleted": True})

    # -- conversations -----------------------------------------------------------------------------------------------

    def _conversation_object(self, c: Conversation) -> dict[str, Any]:
        return {"id": c.id, "object": "conversation", "created_at": c.created_at, "metadata": c.metadata}

    async def create_conversation(self, request: Request) -> Response:
        body = await json_body(request)
        conv = Conversation(self.state.new_id("conv_"), self.state.now(), body.get("metadata") or {})
        conv.items.extend(body.get("items") or [])
        self.state.conversations[conv.id] = conv
        return JSONResponse(self._conversation_object(conv))

    async def get_conversation(self, request: Request) -> Response:
        conv = self.state.conversations.get(request.path_params["conversation_id"])
        return JSONResponse(self._conversation_object(conv)) if conv else error_response(404, "Conversation not found.")

    async def delete_conversation(self, request: Request) -> Response:
        conv = self.state.conversations.pop(request.path_params["conversation_id"], None)
        if conv is None:
            return error_response(404, "Conversation not found.")
        return JSONResponse({"id": conv.id, "object": "conversation.deleted", "deleted": True})

    async def conversation_items(self, request: Request) -> Response:
        conv = self.state.conversations.get(request.path_params["conversation_id"])
        if conv is None:
            return error_response(404, "Conversation not found.")
        return JSONResponse(page(conv.items, request, default_order="desc"))

    # -- containers --------------------------------------------------------------------------------------------------

    def _container(self, request: Request) -> Container | Response:
        c = self.state.containers.get(request.path_params["container_id"])
        if c is None:
            return error_response(404, "Container not found.", "not_found")
        if c.expired:
            return _expired()
        return c

    async def get_container(self, request: Request) -> Response:
        c = self.state.containers.get(request.path_params["container_id"])
        return JSONResponse(_container_object(c)) if c else error_response(404, "Container not found.", "not_found")

    async def delete_container(self, request: Request) -> Response:
        c = self.state.containers.pop(request.path_params["container_id"], None)
        if c is None:
            return error_response(404, "Container not found.", "not_found")
        if c.kernel is not None:
            await self.state.runner.release(c.kernel)
        return JSONResponse({"id": c.id, "object": "container.deleted", "deleted": True})

    async def list_container_files(self, request: Request) -> Response:
        c = self._container(request)
        if isinstance(c, Response):
            return c
        items = [_container_file_object(f) for f in c.files.values()]
        return JSONResponse(page(items, request, default_order="desc"))

    async def add_container_file(self, request: Request) -> Response:
        c = self._container(request)
        if isinstance(c, Response):
            return c
        if request.headers.get("content-type", "").startswith("multipart/"):
            filename, data, _ = await upload_form(request)
            stored = StoredFile(self.state.new_id("assistant-"), filename, data, "assistants", self.state.now())
        else:
            stored_or_none = self.state.files.get(str((await json_body(request)).get("file_id")))
            if stored_or_none is None:
                return error_response(404, "No such File object.", "not_found")
            stored = stored_or_none
        return JSONResponse(_container_file_object(self.state.attach(c, stored)))

    def _container_file(self, request: Request) -> tuple[Container, ContainerFile] | Response:
        c = self._container(request)
        if isinstance(c, Response):
            return c
        cf = c.files.get(request.path_params["file_id"])
        if cf is None:
            return error_response(404, "Container file not found.", "not_found")
        return c, cf

    async def get_container_file(self, request: Request) -> Response:
        found = self._container_file(request)
        return found if isinstance(found, Response) else JSONResponse(_container_file_object(found[1]))

    async def container_file_content(self, request: Request) -> Response:
        found = self._container_file(request)
        if isinstance(found, Response):
            return found
        c, cf = found
        return Response(self.state.container_path(c, cf).read_bytes(), media_type="application/octet-stream")

    # -- responses ---------------------------------------------------------------------------------------------------

    async def create_response(self, request: Request) -> Response:
        body = await json_body(request)
        plan = self._plan(body)
        if isinstance(plan, Response):
            return plan
        rec = ResponseRecord(self.state.new_id("resp_"), body)
        self.state.responses[rec.id] = rec
        run = _ResponseRun(self.state, rec, plan, str(request.url).split("/openai/v1/", 1)[0])
        if body.get("stream"):
            return StreamingResponse(run.sse(), media_type="text/event-stream")
        async for _ in run.events():
            pass
        return JSONResponse(run.response)

    def _plan(self, body: dict[str, Any]) -> _Plan | Response:  # noqa: C901 - known, to split (issue 10)
        ref = body.get("agent_reference") or body.get("agent")
        if not isinstance(ref, dict) or not ref.get("name"):
            return error_response(400, "agent_reference with a name is required.", "invalid_request")
        versions = self.state.agents.get(str(ref["name"]), [])
        wanted = ref.get("version")
        agent = next((v for v in versions if v["version"] == str(wanted)), None) if wanted else None
        if agent is None and not wanted and versions:
            agent = versions[-1]
        if agent is None:
            return error_response(404, f"Agent '{ref['name']}' version '{wanted or 'latest'}' not found.", "not_found")
        inputs = body.get("structured_inputs") or {}
        definition = agent["definition"]
        for key, spec in (definition.get("structured_inputs") or {}).items():
            if spec.get("required") and key not in inputs:
                return error_response(400, f"Missing required structured input '{key}'.", "invalid_request")
        file_ids: list[str] = []
        for tool in definition.get("tools") or []:
            tool_container = tool.get("container") if tool.get("type") == "code_interpreter" else None
            if isinstance(tool_container, dict):
                for raw in tool_container.get("file_ids") or []:
                    m = _PLACEHOLDER.match(str(raw))
                    file_ids.append(str(inputs.get(m.group(1), "")) if m else str(raw))
        missing = [f for f in file_ids if f not in self.state.files]
        if missing:
            return error_response(400, f"File '{missing[0]}' not found.", "invalid_file_id")
        conv: Conversation | None = None
        conv_ref = body.get("conversation")
        if conv_ref is not None:
            conv_id = conv_ref.get("id") if isinstance(conv_ref, dict) else conv_ref
            conv = self.state.conversations.get(str(conv_id))
            if conv is None:
                return error_response(404, f"Conversation '{conv_id}' not found.", "not_found")
        container: Container
        if conv is not None and conv.container_id is not None:
            existing = self.state.containers.get(conv.container_id)
            if existing is None or existing.expired:
                return _expired()
            container = existing
        else:
            container = self.state.new_container()
            if conv is not None:
                conv.container_id = container.id
            # The tool's files are mounted when the container is made; files named by a later request do not
            # reach a conversation's existing container (add them with POST containers/{c}/files).
            for fid in file_ids:
                self.state.attach(container, self.state.files[fid])
        text = _input_text(body.get("input"))
        names = [self.state.files[f].filename for f in file_ids]
        include = body.get("include") or []
        return _Plan(agent, conv, container, text, names, "code_interpreter_call.outputs" in include)

    def _record(self, request: Request) -> ResponseRecord | Response:
        rec = self.state.responses.get(request.path_params["response_id"])
        return rec if rec else error_response(404, "Response not found.", "not_found")

    async def get_response(self, request: Request) -> Response:
        rec = self._record(request)
        if isinstance(rec, Response):
            return rec
        return JSONResponse(rec.final or {"id": rec.id, "object": "response", "status": rec.status})

    async def cancel_response(self, request: Request) -> Response:
        rec = self._record(request)
        if isinstance(rec, Response):
            return rec
        if not rec.body.get("background"):
            # Only background responses can be cancelled; a streamed one stops when its connection closes.
            return error_response(
                400, "Only responses created with background=true can be cancelled.", "invalid_request"
            )
        if rec.status in _TERMINAL:
            return error_response(400, f"Cannot cancel a response with status '{rec.status}'.", "invalid_request")
        rec.cancel_requested.set()
        container = self.state.containers.get(rec.container_id or "")
        if container is not None and container.kernel is not None:
            await container.kernel.interrupt()
        rec.status = "cancelled"
        return JSONResponse({"id": rec.id, "object": "response", "status": "cancelled", "output": []})


class _Plan:
    def __init__(
        self,
        agent: dict[str, Any],
        conv: Conversation | None,
        container: Container,
        text: str,
        file_names: list[str],
        include_outputs: bool,
    ) -> None:
        self.agent = agent
        self.conv = conv
        self.container = container
        self.text = text
        self.file_names = file_names
        self.include_outputs = include_outputs


def _input_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    parts: list[str] = []
    for item in value or []:
        if not isinstance(item, dict):
            continue
        content = item.get("content")
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            parts.extend(str(c.get("text", "")) for c in content if isinstance(c, dict))
    return "\n".join(parts)


def _chunks(text: str, size: int = 64) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


class _ResponseRun:
    """Plays one response: emits the openai stream events in order while the code runs in a real kernel."""

    def __init__(self, state: EmulatorState, rec: ResponseRecord, plan: _Plan, project_url: str) -> None:
        self.state = state
        self.project_url = project_url
        self.rec = rec
        self.plan = plan
        self.seq = 0
        rec.container_id = plan.container.id
        self.response: dict[str, Any] = {
            "id": rec.id,
            "object": "response",
            "created_at": state.now(),
            "status": "in_progress",
            "background": False,
            "conversation": {"id": plan.conv.id} if plan.conv else None,
            "error": None,
            "incomplete_details": None,
            "instructions": plan.agent["definition"].get("instructions"),
            "model": plan.agent["definition"].get("model"),
            "output": [],
            "parallel_tool_calls": True,
            "tool_choice": "auto",
            "tools": plan.agent["definition"].get("tools", []),
            "agent_reference": {
                "type": "agent_reference",
                "name": plan.agent["name"],
                "version": plan.agent["version"],
            },
            "usage": None,
            "metadata": {},
        }

    def _event(self, type_: str, **fields: Any) -> dict[str, Any]:
        event = {"type": type_, "sequence_number": self.seq, **fields}
        self.seq += 1
        return event

    def _snapshot(self) -> dict[str, Any]:
        snapshot: dict[str, Any] = json.loads(json.dumps(self.response))
        return snapshot

    async def sse(self) -> AsyncIterator[bytes]:
        try:
            async for event in self.events():
                yield sse_frame(event)
                if self.state.stream_delay_seconds:
                    await asyncio.sleep(self.state.stream_delay_seconds)
        finally:
            if self.rec.status not in _TERMINAL:
                # The client closed the connection: a streamed (non-background) response stops with it, its code
                # interrupted (Starlette cancels this generator on the disconnect).
                self.rec.status = "cancelled"
                self.rec.cancel_requested.set()

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        rec, plan = self.rec, self.plan
        rec.status = "in_progress"
        yield self._event("response.created", response=self._snapshot())
        yield self._event("response.in_progress", response=self._snapshot())
        failure = self.state.faults.take_run_failure()
        if failure is not None:
            self._finish("failed", error={"code": failure.code, "message": failure.message})
            yield self._event("response.failed", response=self._snapshot())
            return
        stream_error = self.state.faults.take_stream_error()
        if stream_error is not None and not stream_error.after_output:
            for event in self._stream_failure(stream_error):
                yield event
            return
        turn = self.state.model(plan.text, list(plan.file_names))
        self.state.model_calls.append((plan.text, list(plan.file_names)))
        logs = error = ""
        generated: list[ContainerFile] = []
        if turn.code is not None:
            ci_events, outcome = self._code_interpreter(turn.code)
            async for event in ci_events:
                yield event
            if rec.cancel_requested.is_set():
                return
            logs, error, generated = outcome.logs, outcome.error, outcome.generated
        incomplete = self.state.faults.take_incomplete()
        stop_early = stream_error is not None or incomplete is not None
        partial = ""
        async for event in self._message(turn.answer, logs, error, generated if turn.cite else []):
            yield event
            if stop_early and event["type"] == "response.output_text.delta":
                partial += event["delta"]
                break  # part of the answer went out, then the service stops
        if stream_error is not None:
            for event in self._stream_failure(stream_error):
                yield event
            return
        if incomplete is not None:
            message = self.response["output"][-1]
            message.update(status="incomplete", content=[{"type": "output_text", "text": partial, "annotations": []}])
            self._finish("incomplete")
            self.response["incomplete_details"] = {"reason": incomplete}
            self.rec.final = self._snapshot()
            yield self._event("response.incomplete", response=self._snapshot())
            return
        self._finish("completed")
        yield self._event("response.completed", response=self._snapshot())

    def _stream_failure(self, failure: StreamError) -> list[dict[str, Any]]:
        """The nested `error` event the service sends mid-stream, then `response.failed` (the openai SDK raises
        `APIError` at the first, so clients rarely see the second)."""
        code = failure.code
        body = {"type": "invalid_request_error", "code": code, "message": failure.message, "param": None}
        events = [self._event("error", error=body)]
        self._finish("failed", error={"code": code or "server_error", "message": failure.message})
        events.append(self._event("response.failed", response=self._snapshot()))
        return events

    def _finish(self, status: str, error: dict[str, Any] | None = None) -> None:
        self.rec.status = status
        self.response["status"] = status
        self.response["error"] = error
        self.response["usage"] = {
            "input_tokens": len(self.plan.text) // 4,
            "output_tokens": 42,
            "total_tokens": len(self.plan.text) // 4 + 42,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens_details": {"reasoning_tokens": 0},
        }
        self.rec.final = self._snapshot()
        if self.plan.conv is not None and status == "completed":
            user = {
                "id": self.state.new_id("msg_"),
                "type": "message",
                "role": "user",
                "status": "completed",
                "content": [{"type": "input_text", "text": self.plan.text}],
            }
            self.plan.conv.items.extend([user, *self.response["output"]])

    def _code_interpreter(self, code: str) -> tuple[AsyncIterator[dict[str, Any]], _Outcome]:
        outcome = _Outcome()
        return self._code_events(code, outcome), outcome

    async def _code_events(self, code: str, outcome: _Outcome) -> AsyncIterator[dict[str, Any]]:
        index = len(self.response["output"])
        item: dict[str, Any] = {
            "id": self.state.new_id("ci_"),
            "type": "code_interpreter_call",
            "status": "in_progress",
            "container_id": self.plan.container.id,
            "code": "",
            "outputs": None,
        }
        self.response["output"].append(item)
        ids = {"item_id": item["id"], "output_index": index}
        yield self._event("response.output_item.added", output_index=index, item=dict(item))
        yield self._event("response.code_interpreter_call.in_progress", **ids)
        for piece in _chunks(code):
            yield self._event("response.code_interpreter_call_code.delta", delta=piece, **ids)
        item["code"] = code
        yield self._event("response.code_interpreter_call_code.done", code=code, **ids)
        item["status"] = "interpreting"
        yield self._event("response.code_interpreter_call.interpreting", **ids)
        result, generated = await self.state.run_code_unless_cancelled(
            self.plan.container, code, self.rec.cancel_requested
        )
        if result is None:
            return
        outcome.logs = result.logs
        outcome.error = f"{result.error[0]}: {result.error[1]}" if result.error else ""
        outcome.generated = generated
        outputs: list[dict[str, Any]] = []
        if result.logs:
            outputs.append({"type": "logs", "logs": result.logs})
        for png in result.images:
            outputs.append({"type": "image", "url": self._image_url(png)})
        item["status"] = "completed"
        item["outputs"] = outputs if self.plan.include_outputs else None
        yield self._event("response.code_interpreter_call.completed", **ids)
        yield self._event("response.output_item.done", output_index=index, item=dict(item))

    def _image_url(self, png: bytes) -> str:
        style = self.state.image_urls
        if style == "data":
            return "data:image/png;base64," + base64.b64encode(png).decode()
        if style == "remote":
            return f"https://images.example.invalid/{self.rec.id}/display.png?sig=not-for-the-model"
        name = f".display/{self.state.new_id('img_')}.png"
        cf = self.state.add_container_file(self.plan.container, name, png)
        if style == "sandbox":
            return f"sandbox:{cf.path}"
        return f"{self.project_url}/openai/v1/containers/{cf.container_id}/files/{cf.id}/content"

    async def _message(
        self, template: str, logs: str, error: str, generated: list[ContainerFile]
    ) -> AsyncIterator[dict[str, Any]]:
        names = [cf.path.removeprefix("/mnt/data/") for cf in generated]
        values = {"stdout": logs, "logs": logs.rstrip(), "error": error, "files": ", ".join(names)}
        text = template.format_map(values)
        annotations: list[dict[str, Any]] = []
        for cf, name in zip(generated, names, strict=True):
            link = f"[{name}](sandbox:{cf.path})"
            text += ("\n" if text else "") + link
            start = text.rindex(link)
            annotations.append(
                {
                    "type": "container_file_citation",
                    "container_id": cf.container_id,
                    "file_id": cf.id,
                    "filename": name,
                    "start_index": start,
                    "end_index": start + len(link),
                }
            )
        index = len(self.response["output"])
        item: dict[str, Any] = {
            "id": self.state.new_id("msg_"),
            "type": "message",
            "role": "assistant",
            "status": "in_progress",
            "content": [],
        }
        self.response["output"].append(item)
        ids = {"item_id": item["id"], "output_index": index}
        part: dict[str, Any] = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        yield self._event("response.output_item.added", output_index=index, item=dict(item, content=[]))
        yield self._event("response.content_part.added", content_index=0, part=dict(part), **ids)
        for piece in _chunks(text, 24):
            yield self._event("response.output_text.delta", content_index=0, delta=piece, logprobs=[], **ids)
        for i, annotation in enumerate(annotations):
            yield self._event(
                "response.output_text.annotation.added",
                content_index=0,
                annotation_index=i,
                annotation=annotation,
                **ids,
            )
        part = {"type": "output_text", "text": text, "annotations": annotations, "logprobs": []}
        yield self._event("response.output_text.done", content_index=0, text=text, logprobs=[], **ids)
        yield self._event("response.content_part.done", content_index=0, part=part, **ids)
        item.update(status="completed", content=[part])
        yield self._event("response.output_item.done", output_index=index, item=dict(item))


class _Outcome:
    def __init__(self) -> None:
        self.logs = ""
        self.error = ""
        self.generated: list[ContainerFile] = []
