"""The `azure-classic` backend: Foundry classic agents (azure-ai-agents: agents, threads, messages, runs).

The flow of the original Azure walk-through, served through the three tools:
- an upload: the server keeps the local copy in its store, then `file_stored` uploads it to Azure with purpose
  "agents" (`assistants` on the wire). Azure never gives uploaded inputs back, so the local copy is the only one
  that can be fetched later; an Azure id the model copies from an answer is recognised by the store
  (`FileStore.recognise_ids`).
- `run`: one reused agent with the Code Interpreter tool (found by name, or created once); session = thread; the
  step's files go on the user message as attachments for the Code Interpreter; the run is streamed
  (`runs.stream`), never polled, with progress from run and step events and a deadline; cancelling the call
  cancels the run. Text, images (`image_file`) and files (`file_path` annotations) are downloaded into the store.
- Classic agents retire on 2027-03-31; `docs/classic-backend.md` says how to move to the `azure` backend.

The SDK's async flavour (`azure.ai.agents.aio`) runs on the transport and credential adapter the `azure` backend
uses too (`azure/transport.py`, `azure/credential.py`); every call goes through `calls.call_sdk`, the one place that
retries and translates errors, and the run's events are read from the SDK's async run stream (typed events).
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread

from ci_mcp.backends.azure.classic.calls import RetryPolicy, Sleep, call_sdk, failed_run_error
from ci_mcp.backends.azure.classic.client import build_client, require_sdk
from ci_mcp.backends.azure.classic.files import Clock, StillProcessingError, wait_until_processed
from ci_mcp.backends.azure.classic.outputs import Collected, OutputCollector, plan_outputs
from ci_mcp.backends.azure.classic.prompt import Attached, compose_message
from ci_mcp.backends.azure.classic.stream import RunTracker
from ci_mcp.backends.azure.credential import default_credential
from ci_mcp.backends.azure.errors import translate
from ci_mcp.backends.azure.remote_files import RemoteFiles
from ci_mcp.backends.azure.transport import abort, ensure_io_threads, streamed_responses
from ci_mcp.errors import (
    BackendUnavailableError,
    CiMcpError,
    ConfigError,
    InvalidInputError,
    NotFoundError,
    RunFailedError,
)
from ci_mcp.models import FileInfo, ProgressCallback, RunRequest, RunResult, RunStatus, SessionInfo
from ci_mcp.sessions import SessionRecord, SessionStore, TextState, session_info
from ci_mcp.settings import Settings
from ci_mcp.store import FileStore

if TYPE_CHECKING:
    from azure.ai.agents.aio import AgentsClient
    from azure.core.credentials import TokenCredential

log = logging.getLogger(__name__)

BACKEND_NAME = "azure-classic"
_OUR_FILE_ID = re.compile(r"file-[0-9a-f]{24}")
_AZURE_FILE_ID = re.compile(r"(assistant-|file-|cfile_)\S+")
_CANCEL_WAIT_SECONDS = 10.0
_UPLOAD_PROCESSING_SECONDS = 120.0
_MESSAGES_PAGE = 100
"""The service's largest page: one listing holds a run's messages."""


@dataclass(frozen=True)
class ThreadState(TextState):
    """What a session keeps in its session record: the Azure thread it is."""

    thread_id: str = ""


class ClassicAgentsBackend:
    """Backend protocol implementation on azure-ai-agents. See the module docstring for the mapping."""

    name = BACKEND_NAME
    accepts_code = True
    accepts_request = True
    data_mount = "/mnt/data"

    def __init__(
        self,
        settings: Settings,
        store: FileStore,
        *,
        credential: TokenCredential | None = None,
        client_options: Mapping[str, Any] | None = None,
        sleep: Sleep = anyio.sleep,
        clock: Clock = anyio.current_time,
        retry: RetryPolicy | None = None,
    ) -> None:
        """`client_options` go to `AgentsClient` (e.g. `authentication_policy`, `connection_verify`, `transport`).

        `retry` defaults to CI_MCP_AZURE_MAX_RETRIES / CI_MCP_AZURE_MAX_RETRY_WAIT_SECONDS (the SDK's own retries
        are off). `sleep` is what retries and the wait for an upload's processing wait with, `clock` what that wait is
        measured on; tests pass a recorder and a clock it advances, so no test sleeps.
        """
        require_sdk()
        if not settings.azure_endpoint:
            raise ConfigError(
                "CI_MCP_BACKEND=azure-classic needs AZURE_AI_PROJECT_ENDPOINT "
                "(https://<account>.services.ai.azure.com/api/projects/<project>)."
            )
        self.settings = settings
        self.store = store
        self.records = SessionStore(store.data_dir)
        self._endpoint = settings.azure_endpoint
        self._own_credential = credential is None
        self._credential = credential
        self._client_options = dict(client_options or {})
        self._sleep = sleep
        self._clock = clock
        self._retry = retry or RetryPolicy.from_settings(settings)
        self._client: AgentsClient | None = None
        self._agent_id: str | None = None
        self._agent_lock = anyio.Lock()
        self._session_locks: dict[str, anyio.Lock] = {}
        self._remote = RemoteFiles(store.data_dir, f"{settings.azure_endpoint}#classic")
        """ci-mcp file id -> Azure file id of its upload (classic Files API), kept on disk."""
        self._local_of_remote: dict[str, str] = {}
        """Azure file id -> ci-mcp file id, for ids the calling model copies from answers."""
        store.recognise_ids(self._local_id)
        self._processing: dict[str, str] = {}
        """ci-mcp file id -> Azure file id of an upload Azure was still processing when we stopped waiting."""

    # -- lifecycle --------------------------------------------------------------------------------------------

    async def start(self) -> None:
        ensure_io_threads()
        self._require_client()

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with anyio.CancelScope(shield=True):
                await client.close()
        if self._own_credential and self._credential is not None:
            close = getattr(self._credential, "close", None)
            if callable(close):
                await anyio.to_thread.run_sync(close)
            self._credential = None
        self.records.close()

    def describe(self) -> str:
        return (
            "Runs on Azure AI Foundry classic agents (threads and runs; retired by Microsoft on 2027-03-31). "
            "An Azure agent with the Code Interpreter tool writes and runs Python in Azure's sandbox: send a "
            "natural-language `request`; `code` is sent to the agent with an instruction to run it exactly as "
            "given (the agent may still deviate, and its reply is shown). Files in `file_ids` are attached to "
            "the step and appear under /mnt/data (under their Azure file id if not under their name). A session "
            "is an Azure thread: later steps see earlier messages and files. Charts come back as images; "
            "other generated files as links fetchable by id."
        )

    # -- files ------------------------------------------------------------------------------------------------

    async def file_stored(self, info: FileInfo) -> None:
        """An upload is in the store: send it to Azure now. If Azure is unavailable the upload still succeeds; it is
        sent when a run first uses the file."""
        try:
            await self._upload_remote(info)
        except BackendUnavailableError as exc:
            log.warning("upload of %s to Azure deferred: %s", info.file_id, exc)

    def _local_id(self, file_id: str) -> str | None:
        """The store's id of a file the calling model names by its Azure id (copied from an answer); for another
        Azure-looking id, why Azure cannot give it back."""
        local = self._local_of_remote.get(file_id)
        if local is not None:
            return local
        if _AZURE_FILE_ID.fullmatch(file_id) and not _OUR_FILE_ID.fullmatch(file_id):
            raise NotFoundError(
                f"'{file_id}' looks like an Azure file id, not a ci-mcp one. Azure does not give back files "
                "uploaded to agents (only files the code interpreter generated, and only for a while), so "
                "ci-mcp keeps its own copy of every upload and every generated file under the ids that "
                "upload_file and run_code_analysis return; list_files shows them."
            )
        return None

    async def _upload_remote(self, info: FileInfo, limit: float = _UPLOAD_PROCESSING_SECONDS) -> str:
        """The Azure id of `info` once Azure has processed it, waiting at most `limit` seconds for the processing.

        An upload still processing when the wait ends is remembered, so the next attempt waits for it again
        instead of uploading a second copy."""
        from azure.ai.agents.models import FilePurpose

        client = self._require_client()
        path = self.store.path(info.file_id)
        what = f"uploading '{info.name}'"
        remote: Any = None
        pending = self._processing.pop(info.file_id, None)
        if pending is not None:
            with contextlib.suppress(NotFoundError):  # gone from Azure meanwhile: upload it anew
                remote = await call_sdk(
                    partial(client.files.get, pending), what=what, sleep=self._sleep, policy=self._retry
                )
        if remote is None:

            async def send() -> Any:
                with open(path, "rb") as fh:
                    return await client.files.upload(file=(info.name, fh), purpose=FilePurpose.AGENTS)

            remote = await call_sdk(send, what=what, sleep=self._sleep, policy=self._retry, idempotent=False)
        remote_id = str(remote.id)
        poll = partial(call_sdk, partial(client.files.get, remote_id), what=what, sleep=self._sleep, policy=self._retry)
        try:
            await wait_until_processed(
                remote,
                poll,
                name=info.name,
                limit=limit,
                sleep=self._sleep,
                clock=self._clock,
            )
        except StillProcessingError:
            self._processing[info.file_id] = remote_id
            raise
        self._remote.put(info.file_id, info.sha256, remote_id)
        self._local_of_remote[remote_id] = info.file_id
        return remote_id

    # -- sessions ---------------------------------------------------------------------------------------------

    async def sessions(self) -> list[SessionInfo]:
        records = self.records.list(ThreadState, BACKEND_NAME)
        return [session_info(r, not r.closed, self.store) for r in records]

    async def close_session(self, session_id: str) -> None:
        record = self._session_record(session_id, allow_closed=True)
        if record.closed:
            return
        thread_id = record.state.thread_id
        client = self._require_client()
        if thread_id:
            try:
                await call_sdk(
                    partial(client.threads.delete, thread_id),
                    what="deleting the thread",
                    sleep=self._sleep,
                    policy=self._retry,
                )
            except CiMcpError as exc:  # closing stays local even when Azure cannot be told
                log.info("could not delete thread %s: %s", thread_id, exc)
        self.records.update(session_id, closed=True)
        self._session_locks.pop(session_id, None)

    def _session_record(self, session_id: str, *, allow_closed: bool = False) -> SessionRecord[ThreadState]:
        return self.records.open(session_id, BACKEND_NAME, ThreadState, allow_closed=allow_closed)

    async def _open_session(self, session_id: str | None) -> SessionRecord[ThreadState]:
        if session_id is not None:
            return self._session_record(session_id)
        client = self._require_client()
        thread = await call_sdk(
            client.threads.create, what="creating a thread", sleep=self._sleep, policy=self._retry, idempotent=False
        )
        return self.records.create(BACKEND_NAME, ThreadState(str(thread.id)))

    def _lock_for(self, session_id: str) -> anyio.Lock:
        return self._session_locks.setdefault(session_id, anyio.Lock())

    # -- the agent --------------------------------------------------------------------------------------------

    async def _ensure_agent(self) -> str:
        async with self._agent_lock:
            if self._agent_id is not None:
                return self._agent_id
            from azure.ai.agents.models import CodeInterpreterToolDefinition

            client = self._require_client()
            s = self.settings
            wanted_name = s.azure_agent_name

            async def find() -> Any:
                async for agent in client.list_agents(limit=100):
                    if agent.name == wanted_name:
                        return agent
                return None

            found = await call_sdk(find, what="looking up the agent", sleep=self._sleep, policy=self._retry)
            tools = [CodeInterpreterToolDefinition()]
            if found is None:
                created = await call_sdk(
                    partial(
                        client.create_agent,
                        model=s.azure_model,
                        name=wanted_name,
                        instructions=s.azure_instructions,
                        tools=tools,
                        metadata={"created_by": "ci-mcp"},
                    ),
                    what=f"creating the agent '{wanted_name}' (model deployment '{s.azure_model}')",
                    sleep=self._sleep,
                    policy=self._retry,
                    idempotent=False,
                )
                self._agent_id = str(created.id)
            else:
                self._agent_id = str(found.id)
                has_ci = any(getattr(t, "type", None) == "code_interpreter" for t in (found.tools or []))
                if found.model != s.azure_model or found.instructions != s.azure_instructions or not has_ci:
                    await call_sdk(
                        partial(
                            client.update_agent,
                            self._agent_id,
                            model=s.azure_model,
                            instructions=s.azure_instructions,
                            tools=tools,
                        ),
                        what=f"updating the agent '{wanted_name}'",
                        sleep=self._sleep,
                        policy=self._retry,
                    )
            return self._agent_id

    # -- runs -------------------------------------------------------------------------------------------------

    async def run(self, request: RunRequest, progress: ProgressCallback) -> RunResult:
        if not (request.code and request.code.strip()) and not (request.request and request.request.strip()):
            raise InvalidInputError(
                "Pass `request` (what to analyse, in words) and/or `code` (Python for the agent to run)."
            )
        started = anyio.current_time()
        limit = self.settings.run_timeout(request.timeout_seconds)
        deadline = started + limit
        for file_id in request.file_ids:
            self.store.get(file_id)  # unknown ids fail before anything is created on Azure
        record = await self._open_session(request.session_id)
        async with self._lock_for(record.session_id):
            record = self._session_record(record.session_id)
            await self._ensure_agent()
            thread_id = record.state.thread_id
            attached = await self._attach(record, request.file_ids, deadline)
            await self._post_message(record, thread_id, request, attached)
            tracker = RunTracker()
            await progress(0, None, "Starting the Azure run")
            try:
                timed_out = await self._start_and_follow(thread_id, tracker, progress, deadline)
            except anyio.get_cancelled_exc_class():
                with anyio.CancelScope(shield=True):
                    await self._cancel_run(thread_id, tracker.run_id)
                raise
            status, notices = await self._settle(thread_id, tracker, timed_out, limit)
            collected = await self._collect(record.session_id, thread_id, tracker)
            self._local_of_remote.update(collected.remote_ids)
            return RunResult(
                session_id=record.session_id,
                status=status,
                outputs=collected.outputs,
                generated_files=collected.generated,
                notices=notices + collected.notices,
                duration_seconds=anyio.current_time() - started,
            )

    async def _attach(
        self, record: SessionRecord[ThreadState], file_ids: tuple[str, ...], deadline: float
    ) -> list[Attached]:
        attached: list[Attached] = []
        for file_id in dict.fromkeys(file_ids):
            info = self.store.get(file_id)
            limit = min(_UPLOAD_PROCESSING_SECONDS, max(0.0, deadline - anyio.current_time()))
            remote_id = self._remote.get(info.file_id, info.sha256) or await self._upload_remote(info, limit)
            attached.append(Attached(info.name, remote_id))
        return attached

    async def _post_message(
        self, record: SessionRecord[ThreadState], thread_id: str, request: RunRequest, attached: list[Attached]
    ) -> None:
        from azure.ai.agents.models import CodeInterpreterToolDefinition, MessageAttachment

        client = self._require_client()
        attachments = [
            MessageAttachment(file_id=a.remote_id, tools=[CodeInterpreterToolDefinition()]) for a in attached
        ]
        content = compose_message(request.request, request.code, attached)
        try:
            await call_sdk(
                partial(
                    client.messages.create,
                    thread_id,
                    role="user",
                    content=content,
                    attachments=attachments or None,
                ),
                what="adding the message to the thread",
                sleep=self._sleep,
                policy=self._retry,
                idempotent=False,
            )
        except NotFoundError as exc:
            raise NotFoundError(
                f"The Azure thread of session '{record.session_id}' no longer exists (or a file attached to it "
                "expired). Omit session_id to start a new session; files are kept and can be passed again."
            ) from exc

    async def _start_and_follow(
        self, thread_id: str, tracker: RunTracker, progress: ProgressCallback, deadline: float
    ) -> bool:
        """Stream the run; when the cached agent was deleted on Azure meanwhile, find or create it again once."""
        agent_id = await self._ensure_agent()
        try:
            return await self._stream_run(thread_id, agent_id, tracker, progress, deadline)
        except NotFoundError:
            if tracker.run_id is not None:
                raise
            log.info("agent %s is gone; looking it up again", agent_id)
            self._agent_id = None
            agent_id = await self._ensure_agent()
            return await self._stream_run(thread_id, agent_id, tracker, progress, deadline)

    async def _stream_run(
        self, thread_id: str, agent_id: str, tracker: RunTracker, progress: ProgressCallback, deadline: float
    ) -> bool:
        """Follow the run's events until it finishes; True when the deadline passed first. The stream is let go of
        however this ends, so no pool thread stays blocked reading it."""
        with streamed_responses() as opened:
            try:
                return await self._follow(thread_id, agent_id, tracker, progress, deadline)
            finally:
                for response in opened:
                    abort(response)

    async def _follow(
        self, thread_id: str, agent_id: str, tracker: RunTracker, progress: ProgressCallback, deadline: float
    ) -> bool:
        client = self._require_client()
        read_timeout = max(30.0, deadline - anyio.current_time() + 30.0)
        stream = await call_sdk(
            partial(client.runs.stream, thread_id, agent_id=agent_id, read_timeout=read_timeout),
            what="starting the run",
            sleep=self._sleep,
            policy=self._retry,
            idempotent=False,
            deadline=deadline,
        )
        with anyio.move_on_after(max(0.0, deadline - anyio.current_time())) as scope:
            async with stream as events:
                received = aiter(events)
                while not tracker.finished:
                    try:
                        event_type, data, _ = await anext(received)
                    except StopAsyncIteration:
                        break
                    except Exception as exc:  # recorded, not raised: _settle cancels the run
                        tracker.stream_error = str(translate(exc, "reading the run's event stream"))
                        break
                    message = tracker.feed(str(event_type), data)
                    if message is not None:
                        await progress(float(tracker.events), None, message)
        return scope.cancelled_caught

    async def _settle(
        self, thread_id: str, tracker: RunTracker, timed_out: bool, limit: float
    ) -> tuple[RunStatus, tuple[str, ...]]:
        """Decide the run's outcome: a status and notices, or a tool error. Cancels the run when we stop it."""
        if timed_out:
            await self._cancel_run(thread_id, tracker.run_id)
            return "timeout", (
                f"The Azure run did not finish within its {limit:.0f} s limit and was cancelled. The session's "
                "thread is kept: ask for a smaller step, or pass a larger timeout_seconds "
                f"(at most {self.settings.max_run_timeout_seconds:.0f}).",
            )
        if tracker.requires_action:
            await self._cancel_run(thread_id, tracker.run_id)
            tools = ", ".join(tracker.required_tools) or "a function tool"
            raise RunFailedError(
                f"The Azure agent asked for a client-side tool call ({tools}), which ci-mcp does not provide, so "
                f"the run was cancelled. The agent '{self.settings.azure_agent_name}' should have only the Code "
                "Interpreter tool: the operator can remove its other tools or set CI_MCP_AZURE_AGENT_NAME to a "
                "new name. Retrying the same step will likely hit this again."
            )
        if not tracker.terminal:
            await self._cancel_run(thread_id, tracker.run_id)
            detail = tracker.stream_error or "the stream ended before the run finished"
            raise BackendUnavailableError(
                f"The Azure run stream broke off ({detail}); the run was cancelled. Send the same step again."
            )
        if tracker.status == "failed":
            failure = tracker.failure
            raise failed_run_error(failure.code if failure else None, failure.message if failure else None)
        if tracker.status == "expired":
            raise RunFailedError(
                "The Azure run expired before it finished (the service gave up on it). Send the step again, "
                "perhaps split into smaller steps."
            )
        if tracker.status == "cancelled":
            raise RunFailedError(
                "The Azure run was cancelled by someone else (not by this call). Send the step again if still needed."
            )
        if tracker.status == "incomplete":
            reason = tracker.incomplete_reason or "no reason given"
            return "incomplete", (
                f"The Azure run stopped before it was complete ({reason}); what it produced is shown. "
                "Ask for a shorter answer or a smaller step.",
            )
        return "ok", ()

    async def _collect(self, session_id: str, thread_id: str, tracker: RunTracker) -> Collected:
        client = self._require_client()
        listed: list[Mapping[str, object]] = []
        if tracker.run_id is not None:
            run_id = tracker.run_id

            async def list_messages() -> list[Mapping[str, object]]:
                """The run's messages, oldest first, page by page; a page shorter than the limit is the last
                (iterating the SDK's pager would ask once more for the empty page after it)."""
                found: list[Mapping[str, object]] = []
                pages = client.messages.list(thread_id, run_id=run_id, order="asc", limit=_MESSAGES_PAGE).by_page()
                async for page in pages:
                    items = [item async for item in page]
                    found.extend(items)
                    if len(items) < _MESSAGES_PAGE:
                        break
                return found

            try:
                listed = await call_sdk(
                    list_messages, what="listing the run's messages", sleep=self._sleep, policy=self._retry
                )
            except CiMcpError as exc:
                log.warning("listing messages failed, using the streamed copies: %s", exc)

        async def fetch_bytes(remote_id: str) -> bytes:
            async def download() -> bytes:
                return b"".join([chunk async for chunk in await client.files.get_content(remote_id)])

            return await call_sdk(download, what="downloading a generated file", sleep=self._sleep, policy=self._retry)

        async def fetch_name(remote_id: str) -> str | None:
            try:
                info = await call_sdk(
                    partial(client.files.get, remote_id),
                    what="reading a file's name",
                    sleep=self._sleep,
                    policy=self._retry,
                )
            except CiMcpError:
                return None
            return str(info.filename) if info.filename else None

        collector = OutputCollector(self.store, session_id, fetch_bytes, fetch_name)
        return await collector.collect(plan_outputs(tracker, listed))

    async def _cancel_run(self, thread_id: str, run_id: str | None) -> None:
        """Best effort, bounded: cancel the run so the thread accepts the next message."""
        client = self._require_client()
        with anyio.move_on_after(_CANCEL_WAIT_SECONDS):
            try:
                if run_id is None:
                    run_id = await call_sdk(
                        partial(_active_run_id, client, thread_id),
                        what="finding the run to cancel",
                        sleep=self._sleep,
                        policy=self._retry,
                    )
                if run_id is None:
                    return
                run = await call_sdk(
                    partial(client.runs.cancel, thread_id, run_id),
                    what="cancelling the run",
                    sleep=self._sleep,
                    policy=self._retry,
                )
                delay = 0.25
                while run.status in ("cancelling", "queued", "in_progress"):  # the thread is busy until it settles
                    await self._sleep(delay)
                    delay = min(delay * 2, 1.0)
                    run = await call_sdk(
                        partial(client.runs.get, thread_id, run_id),
                        what="waiting for the run to stop",
                        sleep=self._sleep,
                        policy=self._retry,
                    )
            except CiMcpError as exc:
                log.warning("could not cancel run %s on thread %s: %s", run_id, thread_id, exc)

    def _require_client(self) -> AgentsClient:
        if self._client is None:
            if self._credential is None:
                self._credential = default_credential()
            self._client = build_client(self._endpoint, self._credential, self._client_options)
        return self._client


async def _active_run_id(client: AgentsClient, thread_id: str) -> str | None:
    async for run in client.runs.list(thread_id, limit=1, order="desc"):
        if run.status in ("queued", "in_progress", "requires_action"):
            return str(run.id)
        return None
    return None
