"""The `azure` backend: Azure AI Foundry new agents (azure-ai-projects 2.x + its OpenAI client).

Mapping: a session is a *conversation* (whose code-interpreter container keeps Python state and files between
runs); a run is one *response*, streamed; the agent is one *agent version* per definition, reused.

Per-request files: **structured inputs**. The agent definition declares inputs `file_1..file_K` and names them in
the code-interpreter tool (`file_ids=["{{file_1}}", ...]`); each response passes the Files-API ids in
`structured_inputs` (the pattern of the SDK sample `sample_agent_code_interpreter_structured_inputs.py`). Why this
one of the options in docs/azure-api.md:
- a new agent version per file set would cost a POST per run and pile up versions;
- adding files to the container (`POST containers/{c}/files`) needs the container first, which only the first
  response creates, so it costs extra requests and a second response;
- `input_file` content items fail with the code interpreter (Azure/azure-sdk-for-python#45881).
With structured inputs the files ride on the response request itself (zero extra requests), and one version per
file count is reused forever (`versions.py`). Every file attached earlier in a session is passed again on
each run, so the session's files are back if the container had to be recreated. The tool's files reach a container
only when it is created, though: a file named for the first time in a later call of a session whose container is
known is added to that container (`POST containers/{c}/files`) and checked by one listing before the response.

Code: when `RunRequest.code` is given the agent is instructed to run exactly that code (the agent still decides; the
result shows the code it ran when it differs).

Request budget: a warm run (session and files known) is 1 POST /responses (streamed) + 1 container file listing +
1 GET per generated file (a newly named file adds its POST to the container and one listing). A first run adds the
conversation POST, uploads not done yet, and (once per process) the agent-version lookup.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import anyio
from azure.core.credentials import TokenCredential

from ci_mcp.backends.azure.agents.clients import AzureClients, build_clients
from ci_mcp.backends.azure.agents.outputs import Collected, fetch_files, list_container_files, render_steps
from ci_mcp.backends.azure.agents.stream import StageReporter, StreamOutcome, stream_response
from ci_mcp.backends.azure.agents.versions import MAX_FILES, AgentVersions, slot_name
from ci_mcp.backends.azure.agents.wire import compose_message
from ci_mcp.backends.azure.errors import ContainerExpiredError, RetryPolicy, Sleep, call_with_retry, redact
from ci_mcp.backends.azure.remote_files import RemoteFiles
from ci_mcp.backends.azure.transport import ensure_io_threads
from ci_mcp.errors import ConfigError, InvalidInputError, NotFoundError, RunFailedError, RunTimeoutError
from ci_mcp.models import (
    ErrorOutput,
    FileInfo,
    ProgressCallback,
    RunRequest,
    RunResult,
    RunStatus,
    SessionInfo,
    TextOutput,
)
from ci_mcp.sessions import SessionRecord, SessionStore, session_info
from ci_mcp.settings import Settings
from ci_mcp.store import FileStore

log = logging.getLogger(__name__)

BACKEND = "azure"
EXPIRED_NOTICE = (
    "The session's Azure code-interpreter container had expired (idle too long), so a new one was started: Python "
    "variables and in-memory state from earlier steps are lost, and the agent does not remember earlier steps. The "
    "session's attached files were attached again; earlier generated files are still fetchable by id (pass them in "
    "file_ids to use them)."
)

REPLACED_NOTICE = (
    "Azure ran this step in a new code-interpreter container (the session's previous one was replaced without "
    "notice): Python variables, imports and in-memory state from earlier steps are lost, although the agent may "
    "still refer to them. The session's attached files were attached again; earlier generated files are still "
    "fetchable by id (pass them in file_ids to use them). Re-run the setup steps this analysis needs."
)


def incomplete_notice(detail: str | None) -> str:
    return (
        f"The Azure run stopped before it was complete ({redact(detail or 'no reason given')}); what it produced so "
        "far, and the files it generated, are shown. Ask for a shorter answer or a smaller step to finish."
    )


@dataclass
class SessionState:
    """What a session keeps in the store between runs (and restarts)."""

    conversation_id: str | None = None
    container_id: str | None = None
    files: list[str] = field(default_factory=list)
    """Local ids of every file attached in this session, in order."""
    seen: dict[str, int] = field(default_factory=dict)
    """Container file id -> size of generated files already fetched."""

    @classmethod
    def load(cls, raw: Mapping[str, object]) -> SessionState:
        files = raw.get("files")
        seen = raw.get("seen")
        return cls(
            conversation_id=_opt_str(raw.get("conversation_id")),
            container_id=_opt_str(raw.get("container_id")),
            files=[str(f) for f in files] if isinstance(files, list) else [],
            seen={str(k): int(v) for k, v in seen.items()} if isinstance(seen, dict) else {},
        )

    def dump(self) -> dict[str, object]:
        return asdict(self)


def _opt_str(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


class AzureAgentsBackend:
    name = BACKEND
    accepts_code = True
    accepts_request = True
    data_mount = "/mnt/data"

    def __init__(
        self,
        settings: Settings,
        store: FileStore,
        *,
        credential: TokenCredential | None = None,
        ca_file: str | None = None,
        retry_policy: RetryPolicy | None = None,
        sleep: Sleep | None = None,
    ) -> None:
        """`credential`: a sync TokenCredential (default: DefaultAzureCredential). `ca_file`: extra PEM trust (the
        emulator's CA in tests). `retry_policy`: defaults from the azure_max_retries / azure_max_retry_wait settings.
        `sleep`: what every wait between retries waits with (default: the policy's, `anyio.sleep`); tests pass a
        recorder that returns at once, as for the classic backend, so no test sleeps."""
        if not settings.azure_endpoint:
            raise ConfigError(
                "CI_MCP_BACKEND=azure needs AZURE_AI_PROJECT_ENDPOINT "
                "(https://<account>.services.ai.azure.com/api/projects/<project>)."
            )
        self.settings = settings
        self.store = store
        self.records = SessionStore(store.data_dir)
        self._endpoint = settings.azure_endpoint.rstrip("/")
        self._credential = credential
        self._ca_file = ca_file
        self._policy = retry_policy or RetryPolicy.from_settings(settings)
        if sleep is not None:
            self._policy = replace(self._policy, sleep=sleep)
        self._clients: AzureClients | None = None
        self._versions = AgentVersions(
            settings.azure_agent_name, settings.azure_model, settings.azure_instructions, self._policy
        )
        self._remote = RemoteFiles(store.data_dir, self._endpoint)
        self._locks: dict[str, anyio.Lock] = {}

    # -- lifecycle ---------------------------------------------------------------------------------------------------

    def _c(self) -> AzureClients:
        if self._clients is None:
            self._clients = build_clients(self._endpoint, self._credential, ca_file=self._ca_file)
        return self._clients

    async def start(self) -> None:
        ensure_io_threads()
        self._c()

    async def aclose(self) -> None:
        if self._clients is not None:
            clients, self._clients = self._clients, None
            with anyio.CancelScope(shield=True):
                await clients.aclose()
        self.records.close()

    def describe(self) -> str:
        return (
            "Runs on Azure AI Foundry Agent Service (Code Interpreter): an agent writes and runs Python in an Azure "
            "container. `request` (plain language) is what the agent works on; `code` is sent with an instruction "
            "to run exactly that code, and the agent reports the result. Files passed in file_ids appear under "
            "/mnt/data; a session keeps its Python state and files while its container lives (about 20 minutes "
            f"idle), and up to {MAX_FILES} files per session."
        )

    # -- files -------------------------------------------------------------------------------------------------------

    async def file_stored(self, info: FileInfo) -> None:
        """An upload is in the store: send it to Azure now (Files API, purpose=assistants). If Azure refuses, the
        error is the upload's answer; the stored copy stays and is sent again when a run first uses it."""
        await self._remote_id(info, deadline=None)

    async def _remote_id(self, info: FileInfo, deadline: float | None) -> str:
        known = self._remote.get(info.file_id, info.sha256)
        if known:
            return known
        path = self.store.path(info.file_id)
        client = self._c().openai

        async def send() -> Any:
            with path.open("rb") as fh:
                return await client.files.create(file=(info.name, fh, info.media_type), purpose="assistants")

        created = await call_with_retry(
            send, what=f"uploading '{info.name}' to Azure", policy=self._policy, idempotent=False, deadline=deadline
        )
        self._remote.put(info.file_id, info.sha256, str(created.id))
        return str(created.id)

    # -- sessions ----------------------------------------------------------------------------------------------------

    def _session(self, session_id: str) -> SessionRecord[SessionState]:
        return self.records.open(session_id, BACKEND, SessionState)

    async def sessions(self) -> list[SessionInfo]:
        return [session_info(r, True, self.store) for r in self.records.list(SessionState, BACKEND) if not r.closed]

    async def close_session(self, session_id: str) -> None:
        state = self._session(session_id).state
        if state.conversation_id:
            conversation_id = state.conversation_id
            try:
                await call_with_retry(
                    lambda: self._c().openai.conversations.delete(conversation_id),
                    what="deleting the conversation",
                    policy=self._policy,
                )
            except Exception as exc:  # closing stays local even when Azure cannot be told
                log.info("could not delete conversation %s: %s", conversation_id, exc)
        self.records.update(session_id, closed=True)
        self._locks.pop(session_id, None)

    async def _new_conversation(self, deadline: float) -> str:
        created = await call_with_retry(
            lambda: self._c().openai.conversations.create(metadata={"created_by": "ci-mcp"}),
            what="creating the conversation",
            policy=self._policy,
            idempotent=False,
            deadline=deadline,
        )
        return str(created.id)

    # -- runs --------------------------------------------------------------------------------------------------------

    async def run(self, request: RunRequest, progress: ProgressCallback) -> RunResult:
        if not (request.code or request.request):
            raise InvalidInputError("Pass `request` (what to analyse, in plain words) or `code` (Python to run).")
        started = time.monotonic()
        timeout = self.settings.run_timeout(request.timeout_seconds)
        new_files = [self.store.get(fid) for fid in request.file_ids]
        if request.session_id is None:
            session_id = self.records.create(BACKEND, SessionState()).session_id
        else:
            session_id = self._session(request.session_id).session_id
        lock = self._locks.setdefault(session_id, anyio.Lock())
        async with lock:
            state = self._session(session_id).state
            deadline = anyio.current_time() + timeout
            report = StageReporter(progress)
            await report("preparing")
            result = await self._run_locked(session_id, state, request, new_files, report, deadline, timeout)
        return RunResult(
            session_id=result.session_id,
            status=result.status,
            outputs=result.outputs,
            generated_files=result.generated_files,
            notices=result.notices,
            duration_seconds=time.monotonic() - started,
        )

    async def _run_locked(
        self,
        session_id: str,
        state: SessionState,
        request: RunRequest,
        new_files: list[FileInfo],
        report: StageReporter,
        deadline: float,
        timeout: float,
    ) -> RunResult:
        attached_ids = state.files + [f.file_id for f in new_files if f.file_id not in state.files]
        if len(attached_ids) > MAX_FILES:
            raise InvalidInputError(
                f"A session can use at most {MAX_FILES} files on Azure; this one would have {len(attached_ids)}. "
                "Start a new session (omit session_id) with the files this step needs."
            )
        attached = [self.store.get(fid) for fid in attached_ids]
        fresh = {f.file_id for f in new_files if f.file_id not in state.files}
        clients = self._c()
        expired = False
        try:
            with anyio.fail_after(max(0.0, deadline - anyio.current_time())):
                remote_ids = [await self._remote_id(f, deadline) for f in attached]
                version = await self._versions.ensure(clients.project, len(remote_ids), deadline)
                if not state.conversation_id:
                    state.conversation_id = await self._new_conversation(deadline)
                    self.records.update(session_id, state=state)
                elif state.container_id and fresh:
                    to_add = [(f, rid) for f, rid in zip(attached, remote_ids, strict=True) if f.file_id in fresh]
                    try:
                        await self._add_to_container(state.container_id, to_add, deadline)
                    except NotFoundError:  # the container is gone: the response makes a new one with every file
                        log.info("container %s not found; its replacement gets the files", state.container_id)
        except ContainerExpiredError:
            expired = True
        except TimeoutError as exc:
            raise RunTimeoutError(
                f"Preparing the Azure run took longer than {timeout:.0f} s (uploads, agent, conversation). Try "
                "again, or raise timeout_seconds."
            ) from exc
        body: dict[str, Any] = {
            "input": compose_message(request, new_files, attached),
            "agent_reference": {"type": "agent_reference", "name": self._versions.agent_name, "version": version},
        }
        if remote_ids:
            body["structured_inputs"] = {slot_name(i + 1): rid for i, rid in enumerate(remote_ids)}
        notices: list[str] = []
        outcome: StreamOutcome | None = None
        if not expired:
            try:
                outcome = await self._respond(state, body, report, deadline)
            except ContainerExpiredError:
                expired = True
        if outcome is None:
            notices.append(EXPIRED_NOTICE)
            state.conversation_id = await self._new_conversation(deadline)
            state.container_id = None
            state.seen = {}
            self.records.update(session_id, state=state)
            outcome = await self._respond(state, body, report, deadline)
        state.files = attached_ids
        if outcome.timed_out or outcome.digest is None:
            self.records.update(session_id, state=state)
            partial = (TextOutput(outcome.partial_text, kind="answer"),) if outcome.partial_text else ()
            return RunResult(
                session_id=session_id,
                status="timeout",
                outputs=partial,
                generated_files=(),
                notices=(
                    *notices,
                    f"The run exceeded its time limit of {timeout:.0f} s and the Azure response was cancelled. Ask "
                    "for a smaller step, or raise timeout_seconds.",
                ),
            )
        used = outcome.digest.container_ids
        if state.container_id and used and state.container_id not in used:
            notices.append(REPLACED_NOTICE)
            state.seen = {}
        collected = await self._collect(session_id, state, request, outcome, report)
        if used:
            state.container_id = used[-1]
        state.seen.update(collected.seen)
        self.records.update(session_id, state=state)
        raised = any(isinstance(o, ErrorOutput) for o in collected.outputs)
        status: RunStatus = "error" if raised else "ok"
        if outcome.digest.status == "incomplete":
            status = "incomplete"
            notices.append(incomplete_notice(outcome.digest.error_message))
        return RunResult(
            session_id=session_id,
            status=status,
            outputs=tuple(collected.outputs),
            generated_files=tuple(collected.generated),
            notices=(*notices, *collected.notices),
        )

    async def _add_to_container(self, container_id: str, files: list[tuple[FileInfo, str]], deadline: float) -> None:
        """Put files named for the first time in a later call into the conversation's existing container (the
        tool's file_ids only reach a container when it is created), then check by listing that they are there."""
        client = self._c().openai
        added: dict[str, FileInfo] = {}
        for info, remote_id in files:
            created = await call_with_retry(
                lambda rid=remote_id: client.containers.files.create(container_id, file_id=rid),  # type: ignore[misc]
                what=f"adding '{info.name}' to the session's container",
                policy=self._policy,
                idempotent=False,
                deadline=deadline,
            )
            added[str(created.id)] = info
        listed = await call_with_retry(
            lambda: list_container_files(client, container_id),
            what="listing the container's files",
            policy=self._policy,
            deadline=deadline,
        )
        present = {str(getattr(f, "id", "")) for f in listed}
        missing = [info.name for cid, info in added.items() if cid not in present]
        if missing:
            raise RunFailedError(
                f"Azure accepted {', '.join(repr(m) for m in missing)} for the session's container but does not "
                "list it there, so the code could not read it. Start a new session (omit session_id) with all the "
                "files this analysis needs in file_ids."
            )

    async def _respond(
        self, state: SessionState, body: dict[str, Any], report: StageReporter, deadline: float
    ) -> StreamOutcome:
        return await stream_response(
            self._c().openai,
            {**body, "conversation": state.conversation_id},
            report=report,
            deadline=deadline,
            policy=self._policy,
        )

    async def _collect(
        self,
        session_id: str,
        state: SessionState,
        request: RunRequest,
        outcome: StreamOutcome,
        report: StageReporter,
    ) -> Collected:
        assert outcome.digest is not None
        collected = await anyio.to_thread.run_sync(
            lambda: render_steps(outcome.digest, request.code, self.store, session_id)  # type: ignore[arg-type]
        )
        await fetch_files(
            self._c().openai,
            outcome.digest,
            store=self.store,
            session_id=session_id,
            seen=state.seen,
            policy=self._policy,
            report=report,
            out=collected,
        )
        return collected
