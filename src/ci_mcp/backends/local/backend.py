"""The local backend: sessions of sandboxed Jupyter kernels over the durable file store.

A session is a kernel plus its workspace directory (the kernel's /mnt/data). Calls on one session are
serialised; different sessions run in parallel. Session records and files live in the store, so after a server
restart a session id still works: its files are there, its kernel is started afresh and the result says that
in-memory state was lost.
"""

from __future__ import annotations

import functools
import logging
import os
import secrets
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

import anyio
from anyio.abc import TaskGroup

from ci_mcp.backends.local import installs, interpreter, sandbox, workspace, zygote
from ci_mcp.backends.local.codewriter import CodeWriter
from ci_mcp.backends.local.kernel import EventSink, Kernel, KernelEvent, KernelStartError, StreamEvent
from ci_mcp.backends.local.outcomes import RunOutcome, RunProblems, describe_error, ending, name_list
from ci_mcp.backends.local.outputs import OutputCollector
from ci_mcp.backends.local.pool import KernelPool, WarmKernel
from ci_mcp.backends.local.state import LocalSessionState
from ci_mcp.backends.local.workspace import Snapshot
from ci_mcp.errors import (
    BackendUnavailableError,
    CapacityError,
    CiMcpError,
    FileTooLargeError,
    InvalidInputError,
    StorageFullError,
)
from ci_mcp.files import keep_generated_now
from ci_mcp.models import (
    FileInfo,
    OutputCallback,
    ProgressCallback,
    RunRequest,
    RunResult,
    RunStatus,
    SessionInfo,
    TextOutput,
)
from ci_mcp.sessions import SessionStore, session_info
from ci_mcp.settings import Settings
from ci_mcp.store import FileStore, is_disk_full
from ci_mcp.textsafe import quote, storable

log = logging.getLogger(__name__)

PRELOAD = """
import importlib as _il
for _m in ("numpy", "pandas", "matplotlib", "matplotlib.pyplot"):
    try:
        _il.import_module(_m)
    except Exception:
        pass
try:
    import io as _io, matplotlib.pyplot as _plt
    _f = _plt.figure(figsize=(1, 1)); _f.savefig(_io.BytesIO(), format="png"); _plt.close(_f)
    del _io, _plt, _f
except Exception:
    pass
try:
    get_ipython().run_line_magic("config", "InlineBackend.figure_formats = ['png']")
except Exception:
    pass
del _il, _m
"""

REAP_CHILDREN = """
import os as _os
try:
    while _os.waitpid(-1, _os.WNOHANG)[0]:
        pass
except ChildProcessError:
    pass
del _os
"""

MAX_GENERATED_PER_RUN = 200
FORKED_POOL_SIZE = 3
"""Spare kernels when they are forked by the zygote and CI_MCP_KERNEL_POOL_SIZE is unset: enough that a client
opening sessions back to back mostly finds one ready (a fork takes a few hundred ms to be ready on a busy machine),
at about 30 MB of private memory each."""
MB = 1024 * 1024
USE_RECORD_SECONDS = 30.0
"""A session's use is written to its record at most this often by a call (the idle reaper, a stop, a listing of the
sessions and the server's close write what is pending): last_used_at only decides what housekeeping may prune, days
later, so a SQLite write on every call is not worth its time on the warm path (issue 12). A crash loses at most a
minute of it (the reaper's longest pause)."""


@dataclass
class LiveSession:
    session_id: str
    kernel: Kernel
    workspace: Path
    lock: anyio.Lock = field(default_factory=anyio.Lock)
    last_used: float = field(default_factory=time.monotonic)
    runs: int = 0
    history: list[str] = field(default_factory=list)
    pending_notices: list[str] = field(default_factory=list)
    use_recorded: float = -USE_RECORD_SECONDS  # (monotonic) when its use was last written to the record
    use_pending: bool = False  # used since then
    settled: Snapshot | None = None
    """The workspace as the last run's closing walk found it, kept while it is sure to be still the directory's state
    (see `LocalBackend._reusable_snapshot`); None otherwise."""


class LocalBackend:
    name = "local"
    accepts_code = True

    def __init__(self, settings: Settings, store: FileStore) -> None:
        self.settings = settings
        self.store = store
        self.records = SessionStore(store.data_dir)
        self.plan = sandbox.plan_sandbox(settings.sandbox)
        self.data_mount = sandbox.DATA_MOUNT if self.plan.mode == "bwrap" else ""
        self.codewriter: CodeWriter | None = None
        if settings.llm_base_url and settings.llm_model:
            self.codewriter = CodeWriter(settings.llm_base_url, settings.llm_model, settings.llm_api_key)
        self.accepts_request = self.codewriter is not None
        self._python = settings.kernel_python or sys.executable
        self._live: dict[str, LiveSession] = {}
        self._create_lock = anyio.Lock()  # guards the session count only, never held across a kernel start
        self._reserved = 0  # session slots held by kernels being started
        self._starting: dict[str, anyio.Event] = {}  # known sessions whose kernel is being started
        self._tg: TaskGroup | None = None
        self._runtime_dir = Path(tempfile.mkdtemp(prefix="ci-mcp-")).resolve()  # Seatbelt matches resolved paths
        self._mpl_cache = store.data_dir / "cache" / "matplotlib"
        self._py_roots: list[Path] = []
        self._interpreter: interpreter.Interpreter | None = None
        self.zygote: zygote.Zygote | None = None
        forked = self.plan.mode == "bwrap" and settings.kernel_zygote
        self._auto_pool = settings.kernel_pool_size is None
        pool_size = settings.kernel_pool_size
        if pool_size is None:
            pool_size = FORKED_POOL_SIZE if forked else 1
        self.pool = KernelPool(pool_size, self._new_warm_kernel)
        self._probe = interpreter.Probe(  # runs while the server imports the rest (issue 12)
            self._python,
            sandbox.kernel_env(home=str(self._runtime_dir), python=self._python),
            not_containing=(Path.home(), store.data_dir, self._runtime_dir),
            not_inside=(store.data_dir, self._runtime_dir),
        )
        if self.plan.mode == "none":
            log.warning("ci-mcp local backend: %s", self.plan.reason)

    # -- lifecycle -------------------------------------------------------------------------------------------

    async def start(self) -> None:
        python = await anyio.to_thread.run_sync(self.kernel_interpreter)
        if self.plan.mode in ("bwrap", "seatbelt"):
            self._py_roots = list(python.mounts)
        if "matplotlib" in python.libraries:
            await anyio.to_thread.run_sync(prepare_font_cache, self._python, self._mpl_cache)
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        if self.plan.mode == "bwrap" and self.settings.kernel_zygote:
            self.zygote = zygote.Zygote(
                sandbox.zygote_launch(
                    python=self._python,
                    workspaces_dir=self.store.workspaces_dir,
                    runtime_dir=self._runtime_dir,
                    mpl_cache=self._mpl_cache,
                    py_roots=self._py_roots,
                    libraries=self.settings.kernel_preload,
                )
            )
            if self._auto_pool:
                self.zygote.on_disable = self._cold_pool
            self._tg.start_soon(self.zygote.start)  # kernels wanted meanwhile wait for it (or start cold)
        self.pool.attach(self._tg)
        self._tg.start_soon(self._reap_idle)

    async def aclose(self) -> None:
        # Stop the background tasks first (pool refill, idle reaper), so no kernel is started behind our back.
        if self._tg is not None:
            tg, self._tg = self._tg, None
            tg.cancel_scope.cancel()
            await tg.__aexit__(None, None, None)
        with anyio.CancelScope(shield=True):
            await self.pool.aclose()
            for live in list(self._live.values()):
                self._record_use(live, now=True)
                await live.kernel.stop()
            self._live.clear()
            if self.zygote is not None:
                await self.zygote.aclose()
            if self.codewriter is not None:
                await self.codewriter.aclose()
        self._probe.cancel()
        shutil.rmtree(self._runtime_dir, ignore_errors=True)
        self.records.close()

    def _cold_pool(self) -> None:
        """Kernels start cold after all: keep one spare, not the forked kernels' several (each costs ~100 MB)."""
        self.pool.size = min(self.pool.size, 1)

    def kernel_interpreter(self) -> interpreter.Interpreter:
        """The kernel's Python as it describes itself, asked once (about as long as a Python start)."""
        if self._interpreter is None:
            self._interpreter = self._probe.result()
            if self._interpreter.error:
                log.warning("ci-mcp local backend: the kernel's Python: %s", self._interpreter.error)
        return self._interpreter

    def describe(self) -> str:
        where = (
            f"Files are in {self.data_mount} (also the working directory)"
            if self.plan.mode == "bwrap"
            else "Files are in the working directory (use relative paths; /mnt/data does not exist here)"
        )
        nl = (
            "A natural-language `request` is turned into code by the configured model."
            if self.accepts_request
            else "This backend runs the Python `code` you pass; it does not accept a natural-language request alone."
        )
        python = self.kernel_interpreter()
        figures = (
            "Figures still open when the code ends come back as images without saving them; "
            if "matplotlib" in python.libraries
            else ""
        )
        return (
            f"Runs Python in a Jupyter kernel on this machine (one per session; variables persist). {where}. "
            f"{nl} {interpreter.libraries_sentence(python)} {figures}"
            f"{'files' if figures else 'Files'} written to the working directory come back as files"
            + (" (after savefig, plt.close() the figure to avoid getting it twice)" if figures else "")
            + (
                ". No network access, so packages cannot be installed (`%pip install` is refused): use what is there."
                if self.plan.mode != "none"
                else ". No network access."
            )
        )

    # -- kernels ---------------------------------------------------------------------------------------------

    def _launch_for(self, ws: Path) -> Kernel:
        launch = sandbox.build_launch(
            self.plan,
            python=self._python,
            workspace=ws,
            runtime_dir=self._runtime_dir,
            mpl_cache=self._mpl_cache,
            py_roots=self._py_roots,
            kernel_limits=sandbox.limits(
                self.settings.memory_limit_mb,
                self.settings.cpu_time_limit_seconds,
                self.settings.max_processes,
                self.settings.max_file_size_mb,
            ),
            cgroup_limits=(self.settings.memory_limit_mb * 1024 * 1024, self.settings.max_processes),
            zygote=self.zygote,
        )
        return Kernel(launch)

    async def _start_kernel(self, ws: Path) -> Kernel:
        kernel = self._launch_for(ws)
        try:
            await kernel.start()
            if self.settings.kernel_preload:
                await kernel.execute(PRELOAD, deadline=time.monotonic() + 60, sink=_ignore)
        except KernelStartError as exc:
            await kernel.stop()
            raise BackendUnavailableError(f"The local kernel could not start: {exc}{self._lacks()}") from exc
        except BaseException:  # cancelled (server shutting down): never leave a kernel or its sockets behind
            with anyio.CancelScope(shield=True):
                await kernel.stop()
            raise
        return kernel

    def _lacks(self) -> str:
        """Why a kernel cannot start on the kernel's Python, when the probe says so ("" otherwise)."""
        missing = self.kernel_interpreter().kernel_missing
        if not missing:
            return ""
        return (
            f" The kernel's Python ({self._python}) lacks {', '.join(missing)}: install ipython and "
            "matplotlib-inline (or ipykernel, which brings both) into it, or unset CI_MCP_KERNEL_PYTHON."
        )

    async def _restart(self, kernel: Kernel) -> None:
        await kernel.restart()
        if self.settings.kernel_preload:
            await kernel.execute(PRELOAD, deadline=time.monotonic() + 60, sink=_ignore)

    async def _new_warm_kernel(self) -> WarmKernel:
        ws = self.store.workspaces_dir / secrets.token_hex(8)
        ws.mkdir(mode=0o700)
        try:
            return WarmKernel(await self._start_kernel(ws), ws)
        except BaseException:
            shutil.rmtree(ws, ignore_errors=True)
            raise

    # -- sessions --------------------------------------------------------------------------------------------

    async def _session(self, session_id: str | None, progress: ProgressCallback) -> LiveSession:
        """The live session for `session_id`, starting its kernel when needed (a new session when None).

        Finding a live session never waits: kernel starts happen outside any shared lock, so a cold start of one
        session does not hold up calls on the others. A second call on a session whose kernel is being started
        waits for that start only."""
        if session_id is None:
            return await self._new_session(progress)
        while (starting := self._starting.get(session_id)) is not None:
            await starting.wait()
        live = self._live.get(session_id)
        if live is not None:
            return live
        record = self.records.open(session_id, self.name, LocalSessionState)  # unknown, another's, closed: refused
        done = anyio.Event()
        self._starting[session_id] = done  # no await since the lookup above: one start per session
        try:
            await self._reserve()
            try:
                ws = Path(record.state.workspace)
                if not record.state.workspace or not ws.is_dir():
                    ws = self.store.workspaces_dir / secrets.token_hex(8)
                    ws.mkdir(mode=0o700)
                    self.records.update(session_id, state=LocalSessionState(str(ws)))
                await _report(progress, "starting a new Python kernel for this session")
                kernel = await self._start_kernel(ws)
            finally:
                self._reserved -= 1
            live = LiveSession(session_id, kernel, ws)
            live.pending_notices.append(
                "This session's kernel was not running (the server restarted or the session was idle), so a "
                "new kernel was started: variables and imports from earlier calls are gone; files in the "
                "working directory are kept. Re-run any setup code you need."
            )
            self._live[session_id] = live
            return live
        finally:
            del self._starting[session_id]
            done.set()

    async def _new_session(self, progress: ProgressCallback) -> LiveSession:
        await self._reserve()
        try:
            warm = self.pool.take()
            if warm is None:
                await _report(progress, "starting a Python kernel (no pre-started one was free)")
                warm = await self._new_warm_kernel()
        finally:
            self._reserved -= 1
        try:
            record = self.records.create(self.name, LocalSessionState(str(warm.workspace)))
        except BaseException:
            with anyio.CancelScope(shield=True):
                await warm.kernel.stop()
            raise
        live = LiveSession(record.session_id, warm.kernel, warm.workspace)
        if self.plan.mode == "none":
            live.pending_notices.append(self.plan.reason)
        self._live[record.session_id] = live
        return live

    async def _reserve(self) -> None:
        """Hold a session slot for a kernel about to start (the lock covers the count, never the start)."""
        async with self._create_lock:
            await self._make_room()
            self._reserved += 1

    async def _make_room(self) -> None:
        if len(self._live) + self._reserved < self.settings.max_sessions:
            return
        idle = [s for s in self._live.values() if not s.lock.locked()]
        if not idle:
            raise CapacityError(
                f"All {self.settings.max_sessions} sessions are busy. Wait for a run to finish, or close a "
                "session with close_session (operators: raise CI_MCP_MAX_SESSIONS)."
            )
        victim = min(idle, key=lambda s: s.last_used)
        await self._stop_live(victim)

    async def _stop_live(self, live: LiveSession) -> None:
        self._live.pop(live.session_id, None)
        self._record_use(live, now=True)
        await live.kernel.stop()

    def _record_use(self, live: LiveSession, *, now: bool = False) -> None:
        """Write the session's last use to its record: at once when `now` (if it is pending), else when the last
        write is older than USE_RECORD_SECONDS (see there). Bookkeeping only: a failure is logged, never raised."""
        due = time.monotonic() - live.use_recorded >= USE_RECORD_SECONDS
        if not (live.use_pending and (now or due)):
            return
        live.use_pending = False
        live.use_recorded = time.monotonic()
        try:
            self.records.update(live.session_id)
        except (CiMcpError, sqlite3.Error) as exc:
            log.warning("could not record the use of session %s: %s", live.session_id, exc)

    async def _reap_idle(self) -> None:
        limit = self.settings.idle_session_seconds
        while True:
            await anyio.sleep(max(0.05, min(60.0, limit / 4)))
            now = time.monotonic()
            for live in list(self._live.values()):
                self._record_use(live)
                if not live.lock.locked() and now - live.last_used > limit:
                    log.info("stopping idle session %s", live.session_id)
                    await self._stop_live(live)

    async def close_session(self, session_id: str) -> None:
        self.records.get(session_id, LocalSessionState)
        while (starting := self._starting.get(session_id)) is not None:
            await starting.wait()
        live = self._live.get(session_id)
        if live is not None:
            async with live.lock:
                await self._stop_live(live)
        self.records.update(session_id, closed=True)

    async def sessions(self) -> list[SessionInfo]:
        for live in list(self._live.values()):
            self._record_use(live, now=True)
        records = self.records.list(LocalSessionState, self.name)
        return [session_info(r, r.session_id in self._live, self.store) for r in records]

    # -- runs ------------------------------------------------------------------------------------------------

    async def run(self, request: RunRequest, progress: ProgressCallback) -> RunResult:
        if not request.code and not request.request:
            raise InvalidInputError("Pass `code` (Python to run).")
        if not request.code and self.codewriter is None:
            raise InvalidInputError(
                "The local backend runs Python code: pass the analysis as `code` (write it yourself from the "
                "request). Operators can enable natural-language requests by setting CI_MCP_LLM_BASE_URL and "
                "CI_MCP_LLM_MODEL, or use CI_MCP_BACKEND=azure."
            )
        inputs = [self.store.get(fid) for fid in request.file_ids]
        timeout = self.settings.run_timeout(request.timeout_seconds)
        live = await self._session(request.session_id, progress)
        async with live.lock:
            started = time.monotonic()
            try:
                code = request.code
                written = None
                if not code and self.codewriter is not None and request.request:
                    await progress(0, None, "writing code")
                    listed = await anyio.to_thread.run_sync(workspace.snapshot, live.workspace)
                    files = sorted({i.name for i in inputs} | set(listed.files))
                    code = written = await self.codewriter.write(
                        request.request,
                        files,
                        live.history[-3:],
                        self.data_mount,
                        interpreter.libraries_sentence(self.kernel_interpreter()),
                    )
                assert code is not None
                self._refuse_installs(code)
                result = await self._run_locked(live, code, inputs, timeout, progress, started, request.on_output)
                live.history.append(code)
                if written is not None:
                    result = replace(result, outputs=(TextOutput(written, "code"), *result.outputs))
                return result
            except CiMcpError as exc:
                exc.session_id = exc.session_id or live.session_id
                raise
            except Exception as exc:
                log.exception("run in session %s failed", live.session_id)
                failed = CiMcpError(
                    f"The run could not start inside the server ({describe_error(exc)}). This is not caused by the "
                    "code; try again, and the operator finds the details in the server log."
                )
                failed.session_id = live.session_id
                raise failed from exc
            finally:
                live.last_used = time.monotonic()
                live.use_pending = True
                self._record_use(live)

    def _refuse_installs(self, code: str) -> None:
        """A sandboxed kernel has no network: an install line is refused before anything runs, saying how."""
        line = installs.install_line(code) if self.plan.mode != "none" else None
        if line is not None:
            libraries = interpreter.libraries_sentence(self.kernel_interpreter())
            raise InvalidInputError(installs.refusal(line, libraries))

    async def _run_locked(
        self,
        live: LiveSession,
        code: str,
        inputs: list[FileInfo],
        timeout: float,
        progress: ProgressCallback,
        started: float,
        on_output: OutputCallback | None = None,
    ) -> RunResult:
        """One run on a locked session: place the inputs and snapshot the workspace, execute, settle how it ended
        (restarting the kernel where needed), keep the files it wrote and stop its leftover processes, keep the
        full output, then build the result. What the server could not do is said in the notices."""
        notices = live.pending_notices
        live.pending_notices = []
        before = await self._prepare_workspace(live, inputs, notices)
        live.runs += 1
        collector = self._output_collector(live)
        problems = RunProblems(live.session_id)
        sink = _guarded(_tee(collector, on_output), problems)
        outcome = await self._execute(live, code, started, timeout, progress, sink, problems, notices)
        status = await self._settle(live, outcome, timeout, problems, notices)
        await self._keep_files(live, before, collector, problems, notices)
        try:
            if collector.finish_blocks:  # keeps the full output: off the loop
                await anyio.to_thread.run_sync(collector.finish, live.runs)
            else:
                collector.finish(live.runs)
        except Exception as exc:
            problems.failed(exc, "keeping the full output")
        return RunResult(
            session_id=live.session_id,
            status=status,
            outputs=tuple(collector.items),
            generated_files=tuple(collector.generated),
            notices=tuple(notices + collector.notices + problems.notices()),
            duration_seconds=time.monotonic() - started,
        )

    async def _prepare_workspace(self, live: LiveSession, inputs: list[FileInfo], notices: list[str]) -> Snapshot:
        """Copy the run's input files in (saying which) and take the 'before' snapshot."""
        settled, live.settled = live.settled, None
        if settled is not None and not inputs and live.kernel.frozen:
            return settled  # see _reusable_snapshot: the same walk again would find the same files
        placed, before = await anyio.to_thread.run_sync(self._place_inputs, live, inputs)
        if placed:
            notices.append("Input files placed in the working directory: " + ", ".join(map(quote, placed)) + ".")
        return before

    def _output_collector(self, live: LiveSession) -> OutputCollector:
        return OutputCollector(
            self.store,
            live.session_id,
            self.settings.text_output_limit,
            self._runtime_dir,
            max_payload=self.settings.max_display_bytes,
            max_run_payloads=self.settings.max_display_bytes_per_run,
        )

    async def _execute(
        self,
        live: LiveSession,
        code: str,
        started: float,
        timeout: float,
        progress: ProgressCallback,
        sink: EventSink,
        problems: RunProblems,
        notices: list[str],
    ) -> RunOutcome:
        """Run the code with progress ticks until its deadline; say when output messages were too big to read."""
        dropped = live.kernel.dropped_messages
        outcome: RunOutcome
        async with anyio.create_task_group() as tg:
            tg.start_soon(_tick, progress, started, timeout)
            try:
                outcome = await live.kernel.execute(code, deadline=started + timeout, sink=sink)
            except Exception as exc:
                problems.failed(exc, "following the run")
                outcome = "server_error"
            finally:
                tg.cancel_scope.cancel()
        if live.kernel.dropped_messages > dropped and outcome != "died":  # a dying kernel's last frame may be cut
            count, cap_mb = live.kernel.dropped_messages - dropped, live.kernel.max_message_bytes // MB
            notices.append(
                f"{count} output message(s) were over {cap_mb} MB "
                "and were dropped unread. Print or display less "
                "at once: write large results to a file and print a summary."
            )
        return outcome

    async def _settle(
        self, live: LiveSession, outcome: RunOutcome, timeout: float, problems: RunProblems, notices: list[str]
    ) -> RunStatus:
        """The run's status; the kernel restarted where its ending asks for it, and the ending's notice."""
        end = ending(
            outcome,
            timeout,
            returncode=live.kernel.returncode,
            oom=outcome == "died" and live.kernel.out_of_memory,
            memory_mb=self.settings.memory_limit_mb,
        )
        restarted = end.restart and await self._restart_after_run(live, problems)
        if end.notice and (restarted or not end.only_if_restarted):
            notices.append(end.notice)
        return end.status

    async def _restart_after_run(self, live: LiveSession, problems: RunProblems) -> bool:
        try:
            await self._restart(live.kernel)
        except Exception as exc:  # say so, and keep the output: the next call starts a kernel again
            problems.failed(exc, "restarting the kernel")
            return False
        return True

    async def _keep_files(
        self,
        live: LiveSession,
        before: Snapshot,
        collector: OutputCollector,
        problems: RunProblems,
        notices: list[str],
    ) -> None:
        """Stop the processes the run left running and keep the files it wrote."""
        try:
            strays = await anyio.to_thread.run_sync(self._after_run, live, before, collector, problems.lost)
            if strays:
                await live.kernel.execute(REAP_CHILDREN, deadline=time.monotonic() + 5, sink=_ignore)
                strays += await anyio.to_thread.run_sync(live.kernel.kill_strays)  # any started while it reaped
                notices.append(
                    f"{strays} process(es) the code started were still running after the run and were stopped: "
                    "processes do not outlive a run here (create and close process pools within one call)."
                )
        except Exception as exc:
            problems.failed(exc, "collecting the files the run wrote")

    def _place_inputs(self, live: LiveSession, inputs: list[FileInfo]) -> tuple[list[str], workspace.Snapshot]:
        """Off the event loop: copy the run's input files into the workspace, then take the 'before' snapshot."""
        try:
            placed = [workspace.place(self.store.path(info.file_id), live.workspace, info.name) for info in inputs]
        except OSError as exc:
            if is_disk_full(exc):
                raise self.store.no_space("the input files could not be copied into the working directory") from exc
            raise
        return placed, workspace.snapshot(live.workspace)

    def _after_run(
        self, live: LiveSession, before: workspace.Snapshot, collector: OutputCollector, lost: dict[str, list[str]]
    ) -> int:
        """Off the event loop: stop leftover processes, then register the files the run wrote."""
        strays = live.kernel.kill_strays()
        frozen = live.kernel.frozen  # looked at before the walk: see _reusable_snapshot
        after = self._collect_files(live, before, collector, lost)
        live.settled = after if frozen and not strays and _reusable_snapshot(after) else None
        return strays

    def _collect_files(
        self,
        live: LiveSession,
        before: workspace.Snapshot,
        collector: OutputCollector,
        lost: dict[str, list[str]] | None = None,
    ) -> Snapshot | None:
        """Register the files the run wrote; those the store cannot keep go to `lost` (why -> names). Returns the
        walk's snapshot when it is still the directory's state (nothing was deleted to keep the size limit)."""
        own = lost is None
        lost = {} if lost is None else lost
        after = workspace.snapshot(live.workspace)
        if after.stopped:
            collector.notices.append(
                f"Listing the working directory stopped early ({after.stopped}); files past that point were not "
                "registered or counted."
            )
        paths = workspace.changed(before, after)
        limit = self.settings.max_session_dir_mb * 1024 * 1024
        total = after.total_bytes
        trimmed = total > limit
        if trimmed:
            removed: list[str] = []
            links = Counter((e.dev, e.ino) for e in (*after.files.values(), *after.hidden.values()))
            candidates = workspace.changed(before, after, include_hidden=True)
            for rel in sorted(candidates, key=lambda p: after.get(p).charge, reverse=True):  # type: ignore[union-attr]
                if total <= limit:
                    break
                entry = after.get(rel)
                if entry is not None and workspace.remove(live.workspace, rel, entry):
                    removed.append(rel)
                    links[(entry.dev, entry.ino)] -= 1
                    if not links[(entry.dev, entry.ino)]:  # its last link: the space is free
                        total -= entry.charge
            gone = set(removed)
            paths = [p for p in paths if p not in gone]
            shown = ", ".join(map(quote, removed[:20])) + (
                f" and {len(removed) - 20} more" if len(removed) > 20 else ""
            )
            collector.notices.append(
                f"The session directory grew past its limit of {self.settings.max_session_dir_mb} MB (counting "
                "every file by its size on disk), so these new files were deleted: "
                f"{shown or '(none)'}. Write smaller or fewer outputs."
            )
        if len(paths) > MAX_GENERATED_PER_RUN:
            collector.notices.append(
                f"The run created or changed {len(paths)} files; only the first {MAX_GENERATED_PER_RUN} are "
                "registered. Write fewer, larger files (e.g. a zip)."
            )
            paths = paths[:MAX_GENERATED_PER_RUN]
        for rel in paths:
            if rel.startswith(".ci-mcp-"):
                continue
            try:
                fd = workspace.open_generated(live.workspace, rel, after.files[rel])
            except OSError:
                continue
            try:
                with os.fdopen(fd, "rb") as fh:
                    limit = self.settings.max_upload_bytes
                    info = keep_generated_now(
                        self.store, storable(rel), fh, session_id=live.session_id, max_bytes=limit
                    )
            except FileTooLargeError:
                too_big = self.settings.max_upload_bytes
                collector.notices.append(f"{quote(rel)} is over {too_big:,} bytes and was not kept.")
                continue
            except StorageFullError as exc:
                lost.setdefault(exc.cause, []).append(rel)
                continue
            collector.generated.append(info)
            if info.media_type == "image/png":
                collector.picture_file(info, functools.partial(self.store.read, info.file_id))
        if own:
            collector.notices.extend(f"Not kept: {name_list(names)}. {cause}" for cause, names in lost.items())
        return None if trimmed else after


def prepare_font_cache(python: str, cache: Path) -> None:
    """Build matplotlib's font cache in `cache` with `python`, unless it is there: once per data directory, so no
    kernel pays for it (each gets a private copy). A Python without matplotlib leaves it empty."""
    if any(cache.glob("fontlist-*.json")):
        return
    cache.mkdir(parents=True, exist_ok=True)
    env = {"MPLCONFIGDIR": str(cache), "PATH": os.environ.get("PATH", "/usr/bin")}
    subprocess.run(
        [python, "-c", "import matplotlib.font_manager"], env=env, capture_output=True, timeout=120, check=False
    )


def _reusable_snapshot(after: Snapshot | None) -> bool:
    """Whether the closing walk of a run (`after`, None when files were deleted after it) may stand for the next
    run's opening walk, saving a walk and a worker-thread hop per call (issue 12).

    It may when nothing can have changed the directory in between. The session's processes are the only writers
    besides the server: the sandbox shows the directory to no one else, and the server itself writes it only when it
    places a run's input files (then the next run walks afresh) or deletes files over the size limit (then `after`
    is None). The processes cannot write while their cgroup is frozen, and the cgroup is frozen from the end of the
    run's execute to the start of the next one, unless (a) the host has no freezer, or freezing did not take: the
    kernel is looked at just before the walk, and again when the next run starts; between the two nothing of the
    backend thaws it except (b) the child-reaping execute that follows a run that left processes behind (strays:
    then this is not called with a clean slate), or a restart, which happens before the walk. The kernel's code
    cannot thaw its own cgroup (no cgroup filesystem in the sandbox, no privileges). In every other case the next run
    walks afresh, as before: a file a leftover thread writes between runs is then the directory's state, not that
    run's output. A walk that stopped early (too many entries, too slow) is never reused either."""
    return after is not None and after.stopped is None


async def _ignore(event: object) -> None:
    return None


def _guarded(collect: EventSink, problems: RunProblems) -> EventSink:
    """`collect`, with what it raises said in the run's notices: a full disk must not stop the run or lose the
    rest of its output."""

    async def sink(event: KernelEvent) -> None:
        try:
            await collect(event)
        except Exception as exc:
            problems.failed(exc, "keeping an output")

    return sink


def _tee(collector: OutputCollector, on_output: OutputCallback | None) -> EventSink:
    """The collector, plus the run's live text to `on_output` when the caller wants it as it comes."""
    if on_output is None:
        return collector

    async def sink(event: KernelEvent) -> None:
        await collector(event)
        if isinstance(event, StreamEvent):
            try:
                await on_output(event.name, event.text)
            except Exception:  # a broken listener must not break the run
                log.debug("live output listener failed", exc_info=True)

    return sink


async def _report(progress: ProgressCallback, message: str) -> None:
    """One progress message with no total (a kernel start has no meaningful fraction)."""
    try:
        await progress(0, None, message)
    except Exception:  # a client that cannot take progress must not break the run
        return


async def _tick(progress: ProgressCallback, started: float, timeout: float) -> None:
    """Progress once a second while a run goes on, so clients keep long calls open."""
    while True:
        await anyio.sleep(1.0)
        elapsed = time.monotonic() - started
        try:
            await progress(elapsed, timeout, f"running ({elapsed:.0f} s of at most {timeout:g} s)")
        except Exception:  # a client that cannot take progress must not break the run
            return
