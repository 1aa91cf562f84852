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
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

import anyio
from anyio.abc import TaskGroup

from ci_mcp.backends.local import interpreter, sandbox, workspace
from ci_mcp.backends.local.codewriter import CodeWriter
from ci_mcp.backends.local.kernel import Kernel, KernelStartError
from ci_mcp.backends.local.outputs import OutputCollector
from ci_mcp.backends.local.pool import KernelPool, WarmKernel
from ci_mcp.errors import BackendUnavailableError, CapacityError, FileTooLargeError, InvalidInputError
from ci_mcp.models import (
    FileInfo,
    ProgressCallback,
    RunRequest,
    RunResult,
    RunStatus,
    SessionInfo,
    TextOutput,
)
from ci_mcp.settings import Settings
from ci_mcp.store import FileStore

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


class LocalBackend:
    name = "local"
    accepts_code = True

    def __init__(self, settings: Settings, store: FileStore) -> None:
        self.settings = settings
        self.store = store
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
        self._runtime_dir = Path(tempfile.mkdtemp(prefix="ci-mcp-"))
        self._mpl_cache = store.data_dir / "cache" / "matplotlib"
        self._py_roots: list[Path] = []
        self._interpreter: interpreter.Interpreter | None = None
        self.pool = KernelPool(settings.kernel_pool_size, self._new_warm_kernel)
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
        python = await anyio.to_thread.run_sync(self.interpreter)
        if self.plan.mode == "bwrap":
            self._py_roots = list(python.mounts)
        if "matplotlib" in python.libraries:
            await anyio.to_thread.run_sync(self._prepare_mpl_cache)
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
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
                await live.kernel.stop()
            self._live.clear()
            if self.codewriter is not None:
                await self.codewriter.aclose()
        self._probe.cancel()
        shutil.rmtree(self._runtime_dir, ignore_errors=True)

    def interpreter(self) -> interpreter.Interpreter:
        """The kernel's Python as it describes itself, asked once (about as long as a Python start)."""
        if self._interpreter is None:
            self._interpreter = self._probe.result()
            if self._interpreter.error:
                log.warning("ci-mcp local backend: the kernel's Python: %s", self._interpreter.error)
        return self._interpreter

    def _prepare_mpl_cache(self) -> None:
        """Build matplotlib's font cache once, so no kernel pays for it (each gets a private copy)."""
        if any(self._mpl_cache.glob("fontlist-*.json")):
            return
        self._mpl_cache.mkdir(parents=True, exist_ok=True)
        env = {"MPLCONFIGDIR": str(self._mpl_cache), "PATH": os.environ.get("PATH", "/usr/bin")}
        subprocess.run(
            [self._python, "-c", "import matplotlib.font_manager"],
            env=env,
            capture_output=True,
            timeout=120,
            check=False,
        )

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
        python = self.interpreter()
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
            + ". No network access."
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
            raise BackendUnavailableError(f"The local kernel could not start: {exc}") from exc
        except BaseException:  # cancelled (server shutting down): never leave a kernel or its sockets behind
            with anyio.CancelScope(shield=True):
                await kernel.stop()
            raise
        return kernel

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

    async def _session(self, session_id: str | None) -> LiveSession:
        """The live session for `session_id`, starting its kernel when needed (a new session when None).

        Finding a live session never waits: kernel starts happen outside any shared lock, so a cold start of one
        session does not hold up calls on the others. A second call on a session whose kernel is being started
        waits for that start only."""
        if session_id is None:
            return await self._new_session()
        while (starting := self._starting.get(session_id)) is not None:
            await starting.wait()
        live = self._live.get(session_id)
        if live is not None:
            return live
        record = self.store.session(session_id)  # NotFoundError for unknown ids
        if record.backend != self.name:
            raise InvalidInputError(
                f"Session '{session_id}' belongs to the {record.backend} backend; start a new session."
            )
        done = anyio.Event()
        self._starting[session_id] = done  # no await since the lookup above: one start per session
        try:
            await self._reserve()
            try:
                ws = Path(str(record.state.get("workspace", "")))
                if not ws.is_dir():
                    ws = self.store.workspaces_dir / secrets.token_hex(8)
                    ws.mkdir(mode=0o700)
                    self.store.update_session(session_id, state={"workspace": str(ws)})
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

    async def _new_session(self) -> LiveSession:
        await self._reserve()
        try:
            warm = self.pool.take()
            if warm is None:
                warm = await self._new_warm_kernel()
        finally:
            self._reserved -= 1
        try:
            record = self.store.create_session(self.name, {"workspace": str(warm.workspace)})
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
        await live.kernel.stop()

    async def _reap_idle(self) -> None:
        limit = self.settings.idle_session_seconds
        while True:
            await anyio.sleep(max(0.05, min(60.0, limit / 4)))
            now = time.monotonic()
            for live in list(self._live.values()):
                if not live.lock.locked() and now - live.last_used > limit:
                    log.info("stopping idle session %s", live.session_id)
                    await self._stop_live(live)

    async def close_session(self, session_id: str) -> None:
        self.store.session(session_id)
        while (starting := self._starting.get(session_id)) is not None:
            await starting.wait()
        live = self._live.get(session_id)
        if live is not None:
            async with live.lock:
                await self._stop_live(live)
        self.store.update_session(session_id, closed=True)

    async def sessions(self) -> list[SessionInfo]:
        return [self.store.session_info(r, r.session_id in self._live) for r in self.store.sessions(self.name)]

    # -- files -----------------------------------------------------------------------------------------------

    async def upload(self, name: str, source: Path | bytes) -> FileInfo:
        if isinstance(source, bytes):
            return self.store.put_bytes(name, source, origin="upload")
        return await anyio.to_thread.run_sync(
            lambda: self.store.put_path(name, source, origin="upload", max_bytes=self.settings.max_upload_bytes)
        )

    async def file_info(self, file_id: str) -> FileInfo:
        return self.store.get(file_id)

    async def file_path(self, file_id: str) -> Path:
        return self.store.path(file_id)

    async def list_files(self, session_id: str | None = None) -> list[FileInfo]:
        return self.store.list(session_id)

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
        live = await self._session(request.session_id)
        async with live.lock:
            started = time.monotonic()
            try:
                code = request.code
                written = None
                if not code and self.codewriter is not None and request.request:
                    await progress(0, None, "writing code")
                    files = sorted({i.name for i in inputs} | set(workspace.snapshot(live.workspace).files))
                    code = written = await self.codewriter.write(
                        request.request,
                        files,
                        live.history[-3:],
                        self.data_mount,
                        interpreter.libraries_sentence(self.interpreter()),
                    )
                assert code is not None
                result = await self._run_locked(live, code, inputs, timeout, progress, started)
                live.history.append(code)
                if written is not None:
                    result = replace(result, outputs=(TextOutput(written, "code"), *result.outputs))
                return result
            finally:
                live.last_used = time.monotonic()
                self.store.update_session(live.session_id)

    async def _run_locked(
        self,
        live: LiveSession,
        code: str,
        inputs: list[FileInfo],
        timeout: float,
        progress: ProgressCallback,
        started: float,
    ) -> RunResult:
        notices = live.pending_notices
        live.pending_notices = []
        placed, before = await anyio.to_thread.run_sync(self._place_inputs, live, inputs)
        if placed:
            notices.append("Input files placed in the working directory: " + ", ".join(placed) + ".")
        live.runs += 1
        collector = OutputCollector(
            self.store,
            live.session_id,
            self.settings.text_output_limit,
            self._runtime_dir,
            max_payload=self.settings.max_display_bytes,
            max_run_payloads=self.settings.max_display_bytes_per_run,
        )
        deadline = started + timeout
        async with anyio.create_task_group() as tg:
            tg.start_soon(_tick, progress, started, timeout)
            try:
                outcome = await live.kernel.execute(code, deadline=deadline, sink=collector)
            finally:
                tg.cancel_scope.cancel()
        status: RunStatus = "ok"
        if outcome == "error":
            status = "error"
        elif outcome == "interrupted":
            status = "timeout"
            notices.append(
                f"The run was stopped at its time limit of {timeout:g} s (KeyboardInterrupt). The kernel and its "
                "variables are kept. Make the code faster, work on a sample, or pass a larger timeout_seconds."
            )
        elif outcome == "timeout":
            status = "timeout"
            await self._restart(live.kernel)
            notices.append(
                f"The run exceeded its time limit of {timeout:g} s and did not respond to an interrupt, so the "
                "kernel was restarted: variables and imports are gone; files in the working directory are kept."
            )
        elif outcome == "died":
            status = "kernel_died"
            code_ = live.kernel.returncode
            cause = (
                f"it ran out of memory (the limit is {self.settings.memory_limit_mb} MB); work on a sample or in chunks"
                if live.kernel.out_of_memory
                else "common causes are running out of memory, os._exit() or a crash in native code"
            )
            await self._restart(live.kernel)
            notices.append(
                f"The kernel process died during the run (exit code {code_}); {cause}. A new kernel was started: "
                "variables and imports are gone; files in the working directory are kept."
            )
        strays = await anyio.to_thread.run_sync(self._after_run, live, before, collector)
        if strays:
            await live.kernel.execute(REAP_CHILDREN, deadline=time.monotonic() + 5, sink=_ignore)
            strays += await anyio.to_thread.run_sync(live.kernel.kill_strays)  # any started while it reaped
            notices.append(
                f"{strays} process(es) the code started were still running after the run and were stopped: "
                "processes do not outlive a run here (create and close process pools within one call)."
            )
        collector.finish(live.runs)
        return RunResult(
            session_id=live.session_id,
            status=status,
            outputs=tuple(collector.items),
            generated_files=tuple(collector.generated),
            notices=tuple(notices + collector.notices),
            duration_seconds=time.monotonic() - started,
        )

    def _place_inputs(self, live: LiveSession, inputs: list[FileInfo]) -> tuple[list[str], workspace.Snapshot]:
        """Off the event loop: copy the run's input files into the workspace, then take the 'before' snapshot."""
        placed = [workspace.place(self.store.path(info.file_id), live.workspace, info.name) for info in inputs]
        return placed, workspace.snapshot(live.workspace)

    def _after_run(self, live: LiveSession, before: workspace.Snapshot, collector: OutputCollector) -> int:
        """Off the event loop: stop leftover processes, then register the files the run wrote."""
        strays = live.kernel.kill_strays()
        self._collect_files(live, before, collector)
        return strays

    def _collect_files(self, live: LiveSession, before: workspace.Snapshot, collector: OutputCollector) -> None:
        after = workspace.snapshot(live.workspace)
        if after.stopped:
            collector.notices.append(
                f"Listing the working directory stopped early ({after.stopped}); files past that point were not "
                "registered or counted."
            )
        paths = workspace.changed(before, after)
        limit = self.settings.max_session_dir_mb * 1024 * 1024
        total = after.total_bytes
        if total > limit:
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
            shown = ", ".join(removed[:20]) + (f" and {len(removed) - 20} more" if len(removed) > 20 else "")
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
                    info = self.store.put_stream(
                        rel,
                        fh,
                        origin="generated",
                        max_bytes=self.settings.max_upload_bytes,
                        session_id=live.session_id,
                    )
            except FileTooLargeError:
                collector.notices.append(f"'{rel}' is over {self.settings.max_upload_bytes:,} bytes and was not kept.")
                continue
            collector.generated.append(info)
            if info.media_type == "image/png":
                collector.picture_file(info, functools.partial(self.store.read, info.file_id))


async def _ignore(event: object) -> None:
    return None


async def _tick(progress: ProgressCallback, started: float, timeout: float) -> None:
    """Progress once a second while a run goes on, so clients keep long calls open."""
    while True:
        await anyio.sleep(1.0)
        elapsed = time.monotonic() - started
        try:
            await progress(elapsed, timeout, f"running ({elapsed:.0f} s of at most {timeout:g} s)")
        except Exception:  # a client that cannot take progress must not break the run
            return
