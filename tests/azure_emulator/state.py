"""Everything the emulator knows, and the handles tests use to script and inspect it.

- `state.model`: the scripted "model". Called with (user message text, attached file names) it returns a `Turn`:
  Python code to run in the container's real kernel (or None) and an answer template. The default model runs the
  fenced ```python block of the message, so "run exactly this code" instructions work on every backend.
- `state.faults`: fault injection (HTTP errors with Retry-After on a route, a failing next run, expired containers).
- `state.requests`: the request log (method, path, route key) for request counting.
- In-memory stores: files, agent versions, conversations, containers, responses; and generic dicts for the classic
  routes (assistants, threads, messages, runs).

Route keys are "<METHOD> <route template relative to the project endpoint>", e.g. "POST /openai/v1/responses",
"GET /openai/v1/containers/{container_id}/files/{file_id}/content", "POST /threads/{thread_id}/runs".

The state is shared by the test thread and the emulator's event loop thread: plain containers only, mutated under the
GIL; async pieces (kernels, cancel events) live in the emulator loop.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from .kernels import CodeRunner, ExecResult, KernelSession

# -- the scripted model ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Turn:
    """One model turn: code to run (or None) and the answer text.

    `answer` is a template formatted with: {stdout}, {logs} (stdout + result + stderr + traceback), {error}
    (the exception line or ""), {files} (comma-separated names of files the code generated).
    Citations for generated files are appended by the emulator as `[name](sandbox:/mnt/data/name)` links.
    """

    code: str | None
    answer: str = "Done."
    cite: bool = True
    """Cite the generated files in the answer (False: they are only visible by listing the container)."""


class ScriptedModel(Protocol):
    def __call__(self, message: str, file_names: list[str]) -> Turn: ...


_FENCE = re.compile(r"```(?:python|py)?[ \t]*\n(.*?)```", re.DOTALL)


def extract_fenced_code(message: str) -> str | None:
    match = _FENCE.search(message)
    return match.group(1) if match else None


def default_model(message: str, file_names: list[str]) -> Turn:
    """Run the first fenced Python block of the message as is; otherwise answer without code."""
    code = extract_fenced_code(message)
    if code is None:
        return Turn(None, "I need a concrete task. (The emulator's default model only runs fenced Python code.)")
    return Turn(code, "I ran the code.\n{logs}")


class ScriptedTurns:
    """A model that plays the given turns in order (the last one repeats)."""

    def __init__(self, *turns: Turn) -> None:
        self.turns = list(turns)
        self._i = 0

    def __call__(self, message: str, file_names: list[str]) -> Turn:
        turn = self.turns[min(self._i, len(self.turns) - 1)]
        self._i += 1
        return turn


# -- faults -----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fault:
    status: int
    retry_after: float | None
    body: dict[str, Any] | None


@dataclass(frozen=True)
class RunFailure:
    code: str
    message: str


@dataclass(frozen=True)
class StreamError:
    """A nested `error` event in a streamed response, as the service sends it mid-stream."""

    code: str | None
    message: str
    after_output: bool
    """False: right after `response.in_progress`; True: after the code ran and part of the answer was streamed."""


class Faults:
    def __init__(self) -> None:
        self._http: dict[str, deque[Fault]] = {}
        self._runs: deque[RunFailure] = deque()
        self._stream_errors: deque[StreamError] = deque()
        self._incomplete: deque[str] = deque()

    def push(
        self,
        route_key: str,
        status: int = 429,
        retry_after: float | None = 1.0,
        body: dict[str, Any] | None = None,
        times: int = 1,
    ) -> None:
        """The next `times` requests on `route_key` answer `status` (with Retry-After / retry-after-ms headers
        when `retry_after` is not None; fractional seconds are sent exactly in retry-after-ms)."""
        queue = self._http.setdefault(route_key, deque())
        for _ in range(times):
            queue.append(Fault(status, retry_after, body))

    def take(self, route_key: str) -> Fault | None:
        queue = self._http.get(route_key)
        return queue.popleft() if queue else None

    def fail_next_run(self, code: str = "server_error", message: str = "Sorry, something went wrong.") -> None:
        """The next response (new agents) or run (classic) ends `failed` with this error."""
        self._runs.append(RunFailure(code, message))

    fail_next_response = fail_next_run

    def take_run_failure(self) -> RunFailure | None:
        return self._runs.popleft() if self._runs else None

    def error_in_stream(self, code: str | None, message: str, *, after_output: bool = False, times: int = 1) -> None:
        """The next `times` streamed responses (new agents) send `{"type":"error","error":{code,message}}` and then
        `response.failed`, either at once or after some output (`after_output`)."""
        for _ in range(times):
            self._stream_errors.append(StreamError(code, message, after_output))

    def take_stream_error(self) -> StreamError | None:
        return self._stream_errors.popleft() if self._stream_errors else None

    def incomplete_next_response(self, reason: str = "max_output_tokens") -> None:
        """The next response (new agents) or run (classic) runs its code, streams part of the answer, then ends
        `incomplete` with `incomplete_details.reason`."""
        self._incomplete.append(reason)

    def take_incomplete(self) -> str | None:
        return self._incomplete.popleft() if self._incomplete else None


# -- request log ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RequestRecord:
    method: str
    path: str
    """Path relative to the project endpoint, e.g. /openai/v1/responses."""
    route: str
    """Route key, e.g. "POST /openai/v1/containers/{container_id}/files"."""
    query: dict[str, str]
    headers: dict[str, str]
    """Lower-cased names; the authorization value is reduced to its scheme."""
    at: float


# -- stores -----------------------------------------------------------------------------------------------------------


@dataclass
class StoredFile:
    id: str
    filename: str
    data: bytes
    purpose: str
    created_at: int


@dataclass
class ContainerFile:
    id: str
    container_id: str
    path: str
    """Absolute path as the code sees it: /mnt/data/<name>."""
    source: str
    """'user' (attached) or 'assistant' (generated)."""
    created_at: int
    size: int
    mtime_ns: int = 0


@dataclass
class Container:
    id: str
    workdir: Path
    created_at: int
    last_active_at: int
    expired: bool = False
    kernel: KernelSession | None = None
    files: dict[str, ContainerFile] = field(default_factory=dict)
    attached: set[str] = field(default_factory=set)
    """Files-API ids already copied in."""

    @property
    def name_to_file(self) -> dict[str, ContainerFile]:
        return {f.path: f for f in self.files.values()}


@dataclass
class Conversation:
    id: str
    created_at: int
    metadata: dict[str, Any]
    container_id: str | None = None
    items: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class ResponseRecord:
    id: str
    body: dict[str, Any]
    status: str = "queued"
    cancel_requested: asyncio.Event = field(default_factory=asyncio.Event)
    container_id: str | None = None
    final: dict[str, Any] | None = None


class EmulatorState:
    def __init__(self, root: Path, project: str = "p") -> None:
        self.root = root
        self.project = project
        self.model: ScriptedModel = default_model
        self.model_calls: list[tuple[str, list[str]]] = []
        self.faults = Faults()
        self.requests: list[RequestRecord] = []
        self.accepted_tokens: set[str] = {"emulator-token"}
        self.require_auth = True
        self.stream_delay_seconds = 0.0
        """Pause between SSE frames (0: none); a test that needs a slow stream can raise it."""
        self.request_latency_seconds = 0.0
        """Added before every answer, to stand for the network round trip (benchmarks)."""
        self.code_timeout_seconds = 120.0
        self.image_urls = "data"
        """How `code_interpreter_call.outputs` give displayed images: "data" (a data: URL), "container" (a URL of
        a container file), "sandbox" (`sandbox:/mnt/data/...`), or "remote" (a link elsewhere, never fetched)."""
        self.runner = CodeRunner(root / "kernels")
        self.code_running = threading.Event()
        """Set while any container's kernel executes model code (tests wait on it before cancelling)."""
        self.stream_dropped = threading.Event()
        """Set when a client closes a classic run's event stream before its end (tests clear it first)."""

        self.deployments: dict[str, str] = {"gpt-4.1": "gpt-4.1", "gpt-4o": "gpt-4o"}
        """Model deployment name -> model name (GET /deployments/{name})."""
        self.files: dict[str, StoredFile] = {}
        self.agents: dict[str, list[dict[str, Any]]] = {}
        self.conversations: dict[str, Conversation] = {}
        self.containers: dict[str, Container] = {}
        self.responses: dict[str, ResponseRecord] = {}
        # classic routes keep plain JSON objects here
        self.assistants: dict[str, dict[str, Any]] = {}
        self.threads: dict[str, dict[str, Any]] = {}
        self.messages: dict[str, list[dict[str, Any]]] = {}
        self.runs: dict[str, dict[str, Any]] = {}
        self.extra: dict[str, Any] = {}
        """Free room for route modules that need more."""
        self._counter = itertools.count(1)

    # -- ids and time ------------------------------------------------------------------------------------------------

    def new_id(self, prefix: str) -> str:
        return f"{prefix}{next(self._counter):04d}{secrets.token_hex(6)}"

    @staticmethod
    def now() -> int:
        return int(time.time())

    # -- request log -------------------------------------------------------------------------------------------------

    def log(self, record: RequestRecord) -> None:
        self.requests.append(record)

    def mark(self) -> int:
        """A position in the request log; pass it to `requests_since`."""
        return len(self.requests)

    def requests_since(self, mark: int) -> list[RequestRecord]:
        return self.requests[mark:]

    def count(self, route: str | None = None, since: int = 0) -> int:
        return sum(1 for r in self.requests[since:] if route is None or r.route == route)

    # -- files -------------------------------------------------------------------------------------------------------

    def add_file(
        self, filename: str, data: bytes, purpose: str = "assistants", prefix: str = "assistant-"
    ) -> StoredFile:
        stored = StoredFile(self.new_id(prefix), filename, data, purpose, self.now())
        self.files[stored.id] = stored
        return stored

    # -- containers --------------------------------------------------------------------------------------------------

    def new_container(self) -> Container:
        cid = self.new_id("cntr_")
        workdir = self.root / "containers" / cid
        workdir.mkdir(parents=True)
        now = self.now()
        container = Container(cid, workdir, now, now)
        self.containers[cid] = container
        return container

    def expire_container(self, container_id: str | None = None) -> list[str]:
        """Expire one container (or all live ones): the next use answers 400 "Container is expired."."""
        targets = [self.containers[container_id]] if container_id else list(self.containers.values())
        for c in targets:
            c.expired = True
        return [c.id for c in targets]

    def replace_container_silently(self, conversation_id: str) -> str | None:
        """Drop the conversation's container without an error: the next response makes a new one (new id, the
        tool's files, an empty kernel), as the service does when a session was recycled. Returns the old id."""
        conv = self.conversations[conversation_id]
        old, conv.container_id = conv.container_id, None
        return old

    def attach(self, container: Container, stored: StoredFile) -> ContainerFile:
        """Copy an uploaded file into the container's /mnt/data (once)."""
        target = container.workdir / stored.filename
        target.write_bytes(stored.data)
        container.attached.add(stored.id)
        return self._register(container, target, "user")

    def add_container_file(self, container: Container, name: str, data: bytes) -> ContainerFile:
        """A file the service itself put in the container (e.g. a displayed image), under /mnt/data/<name>."""
        target = container.workdir / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        return self._register(container, target, "assistant")

    def _register(self, container: Container, path: Path, source: str) -> ContainerFile:
        st = path.stat()
        mnt = "/mnt/data/" + path.relative_to(container.workdir).as_posix()
        existing = container.name_to_file.get(mnt)
        if existing is not None:
            existing.size, existing.mtime_ns = st.st_size, st.st_mtime_ns
            if source == "assistant":
                existing.source = "assistant"
            return existing
        cf = ContainerFile(self.new_id("cfile_"), container.id, mnt, source, self.now(), st.st_size, st.st_mtime_ns)
        container.files[cf.id] = cf
        return cf

    def container_path(self, container: Container, cf: ContainerFile) -> Path:
        return container.workdir / cf.path.removeprefix("/mnt/data/")

    async def run_code_unless_cancelled(
        self, container: Container, code: str, cancel: asyncio.Event
    ) -> tuple[ExecResult | None, list[ContainerFile]]:
        """`run_code`, abandoned (and interrupted) when `cancel` is set first: then (None, [])."""
        run = asyncio.ensure_future(self.run_code(container, code))
        cancelled = asyncio.ensure_future(cancel.wait())
        try:
            await asyncio.wait({run, cancelled}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            cancelled.cancel()
            if not run.done():
                run.cancel()
                await asyncio.gather(run, return_exceptions=True)
        if cancel.is_set() or run.cancelled():
            return None, []
        return run.result()

    async def run_code(
        self, container: Container, code: str, timeout: float | None = None
    ) -> tuple[ExecResult, list[ContainerFile]]:
        """Run code in the container's kernel; return the result and the files it created or changed."""
        if container.kernel is None:
            container.kernel = await self.runner.open(container.workdir)
        before = _snapshot(container.workdir)
        self.code_running.set()
        try:
            result = await container.kernel.execute(code, timeout or self.code_timeout_seconds)
        finally:
            self.code_running.clear()
        after = _snapshot(container.workdir)
        changed = [p for p, sig in after.items() if before.get(p) != sig]
        container.last_active_at = self.now()
        return result, [self._register(container, p, "assistant") for p in sorted(changed)]

    async def release_kernels(self) -> None:
        """Shut down every container's kernel (containers stay; a later run starts a fresh kernel)."""
        for c in list(self.containers.values()):
            if c.kernel is not None:
                kernel, c.kernel = c.kernel, None
                await self.runner.release(kernel)

    def reset(self) -> None:
        """Back to defaults between tests sharing one emulator (stores and the request log are kept)."""
        self.model = default_model
        self.faults = Faults()
        self.accepted_tokens = {"emulator-token"}
        self.require_auth = True
        self.stream_delay_seconds = 0.0
        self.request_latency_seconds = 0.0
        self.code_timeout_seconds = 120.0
        self.image_urls = "data"

    async def aclose(self) -> None:
        await self.runner.aclose()
        for c in self.containers.values():
            c.kernel = None


def _snapshot(root: Path) -> dict[Path, tuple[int, int]]:
    out: dict[Path, tuple[int, int]] = {}
    for p in root.rglob("*"):
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts):
            st = p.stat()
            out[p] = (st.st_size, st.st_mtime_ns)
    return out
