"""Real code execution for the emulator: one ipykernel per container (new agents) or thread (classic).

A container's working directory stands for `/mnt/data`: the kernel is chdir'ed into it and the literal
`/mnt/data` in submitted code is rewritten to its path. One spare kernel is kept started so that a new
container does not pay the whole kernel start.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import queue
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq.asyncio
from jupyter_client.manager import AsyncKernelManager

MNT_DATA = "/mnt/data"
_START_TIMEOUT = 60.0


@dataclass
class ExecResult:
    """What one execute request produced."""

    stdout: str = ""
    stderr: str = ""
    error: tuple[str, str, str] | None = None
    """(name, value, traceback text) when the code raised."""
    images: list[bytes] = field(default_factory=list)
    """PNG bytes of displayed images (display_data / execute_result image/png)."""
    result: str | None = None
    interrupted: bool = False
    timed_out: bool = False

    @property
    def logs(self) -> str:
        parts = [self.stdout]
        if self.result:
            parts.append(self.result + "\n")
        if self.stderr:
            parts.append(self.stderr)
        if self.error:
            parts.append(self.error[2] or f"{self.error[0]}: {self.error[1]}")
        return "".join(parts)


class KernelSession:
    """One started kernel bound to a working directory."""

    def __init__(self, km: AsyncKernelManager, kc: Any, ipc_dir: str) -> None:
        self.km = km
        self.kc = kc
        self.ipc_dir = ipc_dir
        self.workdir: Path | None = None
        self._lock = asyncio.Lock()
        self.busy = asyncio.Event()
        """Set while code runs (tests wait on it before cancelling)."""

    async def bind(self, workdir: Path) -> None:
        self.workdir = workdir
        await self.execute(f"import os as __os; __os.chdir({str(workdir)!r}); del __os", timeout=30)

    def rewrite(self, code: str) -> str:
        return code.replace(MNT_DATA, str(self.workdir)) if self.workdir else code

    async def execute(self, code: str, timeout: float = 60.0) -> ExecResult:
        async with self._lock:
            self.busy.set()
            try:
                return await self._execute(self.rewrite(code), timeout)
            finally:
                self.busy.clear()

    async def _execute(self, code: str, timeout: float) -> ExecResult:
        result = ExecResult()
        msg_id = self.kc.execute(code, store_history=False, allow_stdin=False)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            while True:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    result.timed_out = True
                    await self.interrupt()
                    deadline = loop.time() + 10  # let the interrupt land and drain to idle
                    continue
                try:
                    msg = await self.kc.get_iopub_msg(timeout=min(remaining, 1.0))
                except queue.Empty:
                    if not await self.km.is_alive():
                        result.error = ("KernelDied", "The kernel process died.", "")
                        return result
                    continue
                if msg.get("parent_header", {}).get("msg_id") != msg_id:
                    continue
                if _absorb(result, msg):
                    return result
        except asyncio.CancelledError:
            # Leave the kernel idle before giving up the lock: an interrupt that lands before the code starts is
            # lost, so interrupt until the kernel reports idle for this request (bounded).
            recovery = asyncio.ensure_future(self._interrupt_until_idle(msg_id))
            while not recovery.done():
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.shield(recovery)
            raise

    async def _interrupt_until_idle(self, msg_id: str, attempts: int = 20) -> None:
        loop = asyncio.get_running_loop()
        for _ in range(attempts):
            await self.interrupt()
            deadline = loop.time() + 0.5
            while (remaining := deadline - loop.time()) > 0:
                try:
                    msg = await self.kc.get_iopub_msg(timeout=remaining)
                except queue.Empty:
                    break
                except Exception:
                    return
                if (
                    msg.get("parent_header", {}).get("msg_id") == msg_id
                    and msg["msg_type"] == "status"
                    and msg["content"].get("execution_state") == "idle"
                ):
                    return

    async def interrupt(self) -> None:
        with contextlib.suppress(Exception):
            await self.km.interrupt_kernel()

    async def shutdown(self) -> None:
        with contextlib.suppress(Exception):
            self.kc.stop_channels()
        with contextlib.suppress(Exception):
            await self.km.shutdown_kernel(now=True)
        shutil.rmtree(self.ipc_dir, ignore_errors=True)


def _absorb(result: ExecResult, msg: dict[str, Any]) -> bool:
    """Fold one iopub message into `result`; True when the kernel went idle."""
    kind = msg["msg_type"]
    content = msg["content"]
    if kind == "stream":
        if content.get("name") == "stderr":
            result.stderr += content.get("text", "")
        else:
            result.stdout += content.get("text", "")
    elif kind in ("display_data", "execute_result"):
        data = content.get("data", {})
        if "image/png" in data:
            result.images.append(base64.b64decode(data["image/png"]))
        elif kind == "execute_result" and "text/plain" in data:
            result.result = data["text/plain"]
    elif kind == "error":
        tb = "\n".join(content.get("traceback", []))
        result.error = (content.get("ename", "Error"), content.get("evalue", ""), _strip_ansi(tb))
        if content.get("ename") == "KeyboardInterrupt":
            result.interrupted = True
    elif kind == "status" and content.get("execution_state") == "idle":
        return True
    return False


def _strip_ansi(text: str) -> str:
    import re

    return re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", text)


class CodeRunner:
    """Starts kernels in the emulator's event loop; keeps one spare. Call `aclose()` at shutdown."""

    def __init__(self, root: Path, spare: int = 1) -> None:
        self.root = root
        self.spare = spare
        self._spares: list[asyncio.Task[KernelSession]] = []
        self._live: list[KernelSession] = []
        self.started = 0

    def warm(self) -> None:
        """Start spare kernels in the background (call from the emulator loop)."""
        while len(self._spares) < self.spare:
            self._spares.append(asyncio.ensure_future(self._start()))

    async def open(self, workdir: Path) -> KernelSession:
        workdir.mkdir(parents=True, exist_ok=True)
        task = self._spares.pop(0) if self._spares else asyncio.ensure_future(self._start())
        session = await task
        self.warm()
        await session.bind(workdir)
        return session

    async def _start(self) -> KernelSession:
        self.root.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        env.update({"MPLBACKEND": "Agg", "PYTHONUNBUFFERED": "1", "PYDEVD_DISABLE_FILE_VALIDATION": "1"})
        # IPC sockets need a short absolute path prefix (the kernel's cwd differs from ours)
        ipc_dir = tempfile.mkdtemp(prefix="azemu-")
        # The process-wide zmq context: a per-kernel one that reaches the garbage collector with open sockets
        # blocks forever in zmq_ctx_term (seen as a rare hang of the whole test run).
        km = AsyncKernelManager(
            kernel_name="python3", transport="ipc", ip=f"{ipc_dir}/k", context=zmq.asyncio.Context.instance()
        )
        kc = None
        try:
            await km.start_kernel(cwd=str(self.root), env=env)
            kc = km.client()
            kc.start_channels()
            await kc.wait_for_ready(timeout=_START_TIMEOUT)
        except BaseException:  # cancelled spares too: a leaked client's zmq context can hang a later GC
            if kc is not None:
                kc.stop_channels()
            with contextlib.suppress(BaseException):
                await asyncio.shield(km.shutdown_kernel(now=True))
            shutil.rmtree(ipc_dir, ignore_errors=True)
            raise
        self.started += 1
        session = KernelSession(km, kc, ipc_dir)
        self._live.append(session)
        return session

    async def release(self, session: KernelSession) -> None:
        if session in self._live:
            self._live.remove(session)
        await session.shutdown()

    async def aclose(self) -> None:
        for task in self._spares:
            if not task.done():
                task.cancel()
            with contextlib.suppress(BaseException):
                await task  # a finished spare is in self._live already
        self._spares.clear()
        live, self._live = self._live, []
        await asyncio.gather(*(s.shutdown() for s in live), return_exceptions=True)
