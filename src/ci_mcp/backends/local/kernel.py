"""One kernel process and the server's end of its socket: start, execute with a deadline, interrupt, restart, stop.

The kernel is ci-mcp's IPython worker (kernel_launcher.py), which connects to a unix stream socket the server
listens on in the kernel's private connection directory. This module is the boundary for that wire: its frames
(newline-ended JSON objects, see kernel_launcher.py) are read here into plain `KernelEvent`s. The kernel is
untrusted: only JSON is decoded, a line that does not parse or names another execution is skipped, and a line over
MAX_MESSAGE_BYTES is read and thrown away in chunks without being held whole (`dropped_messages`); the next newline
puts the reader back in step whatever was written before it. The process is ours so that it can be wrapped by the
sandbox launcher; interrupts are SIGINT sent to the kernel's host pid, which works through a PID namespace. Where the
host gives the kernel a cgroup (cgroups.py), it is frozen from the end of one execution to the start of the next.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import anyio
from anyio.abc import Process

from ci_mcp.backends.local import cgroups, procs
from ci_mcp.backends.local.zygote import ForkedProcess, Zygote, ZygoteUnavailable

log = logging.getLogger(__name__)

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_START_TIMEOUT = 60.0
_POLL = 0.25
CONN_DIR = "{conn_dir}"
SOCKET_NAME = "kernel.sock"
"""The socket in the connection directory (private, 0700, bound into the kernel's sandbox alone); its path is the
worker's argument, and so also the command-line marker `procs.find_kernel` looks for."""
ADDRESS_NAME = "kernel.address.json"
"""Where there are no unix sockets (Windows): the loopback port and token the kernel connects with (its name ends
with kernel_launcher.ADDRESS_SUFFIX)."""
_HELLO_SECONDS = 10.0
"""How long a loopback connection may take to greet with the token before it is dropped as not the kernel's."""

MAX_MESSAGE_BYTES = 256 * 1024 * 1024
"""Largest frame the server takes from a kernel. The server is not sandboxed, and a frame is held whole before it is
parsed; a longer one is read and dropped in chunks, and counted in `Kernel.dropped_messages`."""
_CHUNK = 1 << 18


class FrameReader:
    """Frames out of the bytes a kernel sends: each line one JSON object. Lines that do not parse, or are not
    objects, are skipped; a line longer than `limit` is dropped as it comes (never held whole) and counted."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.dropped = 0
        self._buffer = bytearray()
        self._scanned = 0
        self._skipping = False

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        frames: list[dict[str, Any]] = []
        if self._skipping:
            end = data.find(b"\n")
            if end < 0:
                return frames
            self._skipping, data = False, data[end + 1 :]
        buffer = self._buffer
        buffer += data
        start = 0
        while True:
            end = buffer.find(b"\n", max(start, self._scanned))
            if end < 0:
                break
            frame = _frame(bytes(buffer[start:end])) if end - start <= self.limit else None
            if end - start > self.limit:
                self.dropped += 1
            if frame is not None:
                frames.append(frame)
            start, self._scanned = end + 1, 0
        del buffer[:start]
        self._scanned = len(buffer)
        if len(buffer) > self.limit:  # a line past the limit and not ended yet: drop it and what follows of it
            self.dropped += 1
            buffer.clear()
            self._scanned, self._skipping = 0, True
        return frames


def _frame(line: bytes) -> dict[str, Any] | None:
    if not line.strip():
        return None
    try:
        value = json.loads(line)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def strip_ansi(text: str) -> str:
    return _ANSI.sub("", text)


@dataclass(frozen=True)
class KernelLaunch:
    """How to start a kernel process. `wrapper` is the sandbox command prefix (empty: none)."""

    python: str
    cwd: Path
    env: dict[str, str]
    runtime_dir: Path
    script: str
    """Path of kernel_launcher.py as the kernel process sees it."""
    limits: dict[str, int] = field(default_factory=dict)
    mpl_seed: Path | None = None
    """A prepared matplotlib cache, copied into each kernel's private MPLCONFIGDIR (CONN_DIR/mpl)."""
    cgroup_limits: tuple[int, int] | None = None
    """(memory bytes, processes) for per-kernel cgroups, where the host allows them."""
    wrapper: tuple[str, ...] = ()
    """Sandbox command prefix; the token CONN_DIR is replaced by the kernel's private connection directory."""
    zygote: Zygote | None = None
    """Where set and usable, the kernel is forked by this zygote (zygote.py) instead of started with `wrapper`."""


@dataclass(frozen=True)
class StreamEvent:
    name: Literal["stdout", "stderr"]
    text: str


@dataclass(frozen=True)
class DisplayEvent:
    """display_data or execute_result: a mime bundle (values are str; images base64 as sent)."""

    data: dict[str, str]
    is_result: bool


@dataclass(frozen=True)
class ErrorEvent:
    name: str
    value: str
    traceback: str


@dataclass(frozen=True)
class ClearEvent:
    pass


KernelEvent = StreamEvent | DisplayEvent | ErrorEvent | ClearEvent
EventSink = Callable[[KernelEvent], Awaitable[None]]

Outcome = Literal["ok", "error", "timeout", "interrupted", "died"]


class KernelStartError(Exception):
    """The kernel process did not come up; the message says why in plain words."""


class _Wire:
    """The server's end of a kernel's socket (non-blocking): frames out, frames in through a `FrameReader`."""

    def __init__(self, sock: socket.socket, limit: int) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.reader = FrameReader(limit)
        self.closed = False
        self.pending: list[dict[str, Any]] = []
        """Frames already read and not yet handed out (those that came with a loopback greeting)."""

    async def send(self, frame: dict[str, Any], deadline: float) -> bool:
        """Write one frame; False when the kernel's end is closed or does not read it before `deadline`."""
        view = memoryview(b"\n" + json.dumps(frame).encode("ascii") + b"\n")
        while view:
            try:
                view = view[self.sock.send(view) :]
            except (BlockingIOError, InterruptedError):
                with anyio.move_on_after(max(0.0, deadline - time.monotonic())) as scope:
                    await anyio.wait_writable(self.sock)
                if scope.cancelled_caught:
                    return False
            except OSError:
                self.closed = True
                return False
        return True

    async def receive(self, timeout: float) -> list[dict[str, Any]]:
        """The frames that came within `timeout` seconds (empty: none did, or the connection is closed)."""
        if self.pending:
            frames, self.pending = self.pending, []
            return frames
        if self.closed:
            return []
        data = self._read()
        if data is None:
            with anyio.move_on_after(timeout):
                await anyio.wait_readable(self.sock)
            data = self._read()
        return self.reader.feed(data) if data else []

    def _read(self) -> bytes | None:
        try:
            data = self.sock.recv(_CHUNK)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError:
            data = b""
        if not data:
            self.closed = True
        return data

    def close(self) -> None:
        self.closed = True
        self.sock.close()


def _listen(conn_dir: Path) -> tuple[socket.socket, str, str | None]:
    """The listening socket for a kernel, the path the kernel is given, and the token it must greet with: a unix
    socket in its private directory (no token: only who can enter that 0700 directory can connect), or where there
    are none (Windows) a loopback TCP port, written with a fresh token to an address file in that directory."""
    if hasattr(socket, "AF_UNIX"):
        path = str(conn_dir / SOCKET_NAME)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(path)
            listener.listen(1)
        except BaseException:
            listener.close()
            raise
        listener.setblocking(False)
        return listener, path, None
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        token = secrets.token_hex(16)
        path = str(conn_dir / ADDRESS_NAME)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as file:
            json.dump({"port": listener.getsockname()[1], "token": token}, file)
    except BaseException:
        listener.close()
        raise
    listener.setblocking(False)
    return listener, path, token


async def _greeted(wire: _Wire, token: str) -> bool:
    """Whether a loopback connection's first frame is the kernel's `hello` with `token` (within _HELLO_SECONDS).
    Frames after it stay in the reader's hands for `_wait_ready`."""
    deadline = time.monotonic() + _HELLO_SECONDS
    while not wire.closed and time.monotonic() < deadline:
        frames = await wire.receive(_POLL)
        if frames:
            first, rest = frames[0], frames[1:]
            if first.get("t") != "hello" or not secrets.compare_digest(str(first.get("token", "")), token):
                return False
            wire.pending.extend(rest)
            return True
    return False


class Kernel:
    """A kernel process with its socket. Not safe for concurrent `execute` calls: the session serialises them."""

    def __init__(self, launch: KernelLaunch) -> None:
        self.launch = launch
        self._process: Process | ForkedProcess | None = None
        self._wire: _Wire | None = None
        self._conn_dir: Path | None = None
        self._kernel_pid: int | None = None
        self._keep: frozenset[int] | None = None
        """The kernel and the sandbox processes above it: fixed for the kernel's life, read at its first stray check."""
        self._cgroups: cgroups.KernelCgroups | None = None
        self._runs = 0
        self._dropped_before = 0
        """Frames dropped on the kernels this one replaced (restart): `dropped_messages` only grows."""
        self.started_at = 0.0

    @property
    def max_message_bytes(self) -> int:
        return MAX_MESSAGE_BYTES

    @property
    def dropped_messages(self) -> int:
        """Output frames refused for their size since the kernel was made (the backend reports new ones)."""
        wire = self._wire
        return self._dropped_before + (wire.reader.dropped if wire is not None else 0)

    @property
    def alive(self) -> bool:
        return self._process is not None and self._process.returncode is None

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    async def start(self) -> None:
        launch = self.launch
        self._conn_dir = launch.runtime_dir / ("k-" + secrets.token_hex(6))
        self._conn_dir.mkdir(parents=True, mode=0o700)
        listener, path, token = _listen(self._conn_dir)
        try:
            if launch.cgroup_limits is not None:
                self._cgroups = cgroups.create(*launch.cgroup_limits)
            if launch.mpl_seed is not None and launch.mpl_seed.is_dir():
                shutil.copytree(launch.mpl_seed, self._conn_dir / "mpl")
            env = {k: v.replace(CONN_DIR, str(self._conn_dir)) for k, v in launch.env.items()}
            log_file = open(self._conn_dir / "kernel.log", "wb")  # noqa: SIM115 - handed to the child, closed below
            try:
                self._process = await self._fork(env, [path], log_file.fileno())
                if self._process is None:
                    self._process = await self._spawn(env, [path], log_file)
            finally:
                log_file.close()
            self._kernel_pid, self._keep = None, None
            try:
                await self._wait_ready(listener, token)
            except BaseException:
                await self.stop()
                raise
        finally:
            listener.close()
        if isinstance(self._process, ForkedProcess):
            self._kernel_pid = self._process.kernel_pid
        else:
            self._kernel_pid = procs.find_kernel(self._process.pid, path)
        self.started_at = time.monotonic()
        await self._freeze()

    async def _fork(self, env: dict[str, str], kernel_args: list[str], log_fd: int) -> ForkedProcess | None:
        """The kernel as a fork of the zygote, where there is a usable one (None: start it cold)."""
        zygote, conn_dir = self.launch.zygote, self._conn_dir
        if zygote is None or not zygote.usable or conn_dir is None:
            return None
        groups = self._cgroups
        try:
            return await zygote.spawn(
                conn_dir=conn_dir,
                workspace=self.launch.cwd,
                env=env,
                limits=self.launch.limits,
                argv=kernel_args,
                log_fd=log_fd,
                place=groups.add if groups is not None else lambda pids: None,
            )
        except ZygoteUnavailable:
            return None

    async def _spawn(self, env: dict[str, str], kernel_args: list[str], log: Any) -> Process:
        """The kernel as a process of its own: the sandbox command (bwrap, Seatbelt, none) around the launcher."""
        launch, conn_dir = self.launch, str(self._conn_dir)
        argv = [
            *(self._cgroups.wrapper() if self._cgroups is not None else ()),
            *(arg.replace(CONN_DIR, conn_dir) for arg in launch.wrapper),  # also inside `-D name=path`
            launch.python,
            launch.script,
            json.dumps(launch.limits),
            *kernel_args,
        ]
        return await anyio.open_process(
            argv,
            cwd=str(launch.cwd),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=log,
            start_new_session=True,
        )

    async def _wait_ready(self, listener: socket.socket, token: str | None) -> None:
        """Accept the kernel's connection (the only one: the socket is closed after it) and wait for its `ready`.
        With a `token` (loopback TCP), a connection counts only once it greets with it; others are closed."""
        deadline = time.monotonic() + _START_TIMEOUT
        while self._wire is None:
            self._check_starting(deadline)
            try:
                sock, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                with anyio.move_on_after(_POLL):
                    await anyio.wait_readable(listener)
                continue
            wire = _Wire(sock, MAX_MESSAGE_BYTES)
            if token is None or await _greeted(wire, token):
                self._wire = wire
            else:
                wire.close()
        wire = self._wire
        while True:
            self._check_starting(deadline)
            if wire.closed:
                with anyio.move_on_after(2):
                    await self._require_process().wait()
                self._check_starting(deadline)
                raise KernelStartError(f"The kernel closed its connection while starting{self._log_tail()}.")
            if any(frame.get("t") == "ready" for frame in await wire.receive(_POLL)):
                return

    def _check_starting(self, deadline: float) -> None:
        if not self.alive:
            raise KernelStartError(
                f"The kernel process exited with code {self.returncode} while starting"
                f"{self._log_tail()}. Run `ci-mcp doctor` to see why."
            )
        if time.monotonic() > deadline:
            raise KernelStartError(f"The kernel did not answer within {_START_TIMEOUT:.0f} s. Run `ci-mcp doctor`.")

    def _log_tail(self) -> str:
        if self._conn_dir is None:
            return ""
        try:
            lines = (self._conn_dir / "kernel.log").read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return f" ({lines[-1][:300]})" if lines else ""

    def _require_wire(self) -> _Wire:
        if self._wire is None:
            raise RuntimeError("kernel not started")
        return self._wire

    def _require_process(self) -> Process | ForkedProcess:
        if self._process is None:
            raise RuntimeError("kernel not started")
        return self._process

    @property
    def returncode(self) -> int | None:
        return None if self._process is None else self._process.returncode

    async def execute(self, code: str, *, deadline: float, sink: EventSink) -> Outcome:
        """Run `code`; report every output to `sink`; return how it ended.

        On the deadline, or on cancellation, the kernel is interrupted; if it does not come back within a
        grace period the caller sees "timeout" (or the cancellation) and must `restart()`.
        """
        wire = self._require_wire()
        if self._cgroups is not None:
            self._cgroups.thaw()
        self._runs += 1
        run_id = f"{self._runs}-{secrets.token_hex(4)}"
        try:
            if not await wire.send({"t": "execute", "id": run_id, "code": code}, deadline):
                return await self._died() if wire.closed else "timeout"
            return await self._collect(run_id, deadline, sink)
        except anyio.get_cancelled_exc_class():
            with anyio.CancelScope(shield=True):
                await self.interrupt()
                outcome = await self._collect(run_id, time.monotonic() + 2.0, _discard)
                if outcome == "timeout":
                    await self.restart()
            raise
        finally:
            with anyio.CancelScope(shield=True):
                await self._freeze()

    async def _freeze(self) -> None:
        """Between runs the session's cgroup is frozen: threads the code left running get no CPU until the next
        run thaws it (where the host has a freezer). A frozen kernel is still killed by stop().

        Only asked for here: the freezer stops the tasks asynchronously, and the run's end waits for it in the
        worker thread that looks for leftover processes anyway (`kill_strays`, before the result is returned), so
        a run pays no thread round trip of its own for the freeze (issue 12)."""
        groups = self._cgroups
        if groups is not None and groups.can_freeze and self.alive:
            groups.freeze(limit_seconds=0)

    async def _collect(self, run_id: str, deadline: float, sink: EventSink) -> Outcome:
        """Read the frames of execution `run_id` until its `done` (or the deadline, the interrupt's grace period or
        the process runs out); report its outputs to `sink`; return how it ended."""
        run = _Execution(run_id, deadline)
        wire = self._require_wire()
        while True:
            ended = await self._enforce_limits(run, time.monotonic())
            if ended is not None:
                return ended
            if wire.closed:
                return await self._died()
            for frame in await wire.receive(run.wait(time.monotonic())):
                if frame.get("id") != run_id:
                    continue  # another execution's, or no execution's
                kind = frame.get("t")
                if kind == "done":
                    if run.interrupted_at is not None:
                        return "interrupted"
                    return "error" if run.outcome == "error" or frame.get("status") == "error" else "ok"
                event = _event(str(kind), frame)
                if event is not None:
                    if isinstance(event, ErrorEvent):
                        run.outcome = "error"
                    await sink(event)

    async def _enforce_limits(self, run: _Execution, now: float) -> Outcome | None:
        """Interrupt at the deadline; the run's end when the interrupt is not answered within 3 s ("timeout") or
        the process is gone ("died"); None while it may go on."""
        if run.interrupted_at is None and now >= run.deadline:
            await self.interrupt()
            run.interrupted_at = now
        if run.interrupted_at is not None and now - run.interrupted_at > 3.0:
            return "timeout"
        if not self.alive:
            return "died"
        return None

    async def _died(self) -> Outcome:
        """The kernel's end of the socket closed: it exited, or its code closed the socket (then it is killed, as
        it can run nothing more)."""
        process = self._require_process()
        with anyio.move_on_after(0.5):  # the socket closes as the process exits: its status follows at once
            await process.wait()
        if process.returncode is None:
            self._kill()
            with anyio.move_on_after(5):
                await process.wait()
        return "died"

    def kill_strays(self) -> int:
        """Kill every process of this kernel's sandbox except the kernel (and the sandbox processes above it);
        returns how many there were. With cgroups, what belongs to the session is its cgroup's membership, frozen
        while it is read, and the group stays frozen after."""
        if self._process is None or not self.alive:
            return 0
        if self._kernel_pid is None:
            return 0
        if self._cgroups is not None:
            if self._keep is None:
                self._keep = frozenset({self._kernel_pid, *procs.ancestors(self._kernel_pid)})
            return self._cgroups.kill_except(self._keep)
        return procs.kill_strays(self._process.pid, self._kernel_pid)

    async def interrupt(self) -> None:
        """SIGINT to the kernel (its host pid: works inside a PID namespace); the worker raises KeyboardInterrupt in
        the code it runs."""
        process = self._process
        if process is None or not self.alive:
            return
        if isinstance(process, ForkedProcess):
            process.signal_kernel(signal.SIGINT)
        elif self._kernel_pid is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(self._kernel_pid, signal.SIGINT)
        if not self.launch.wrapper or self._kernel_pid is None:
            # Without a sandbox wrapper the kernel leads its process group (no pid found: the group is the way).
            with contextlib.suppress(ProcessLookupError, PermissionError):
                procs.kill_group(process.pid, signal.SIGINT)

    async def restart(self) -> None:
        await self.stop()
        await self.start()

    def _kill(self) -> None:
        process = self._process
        if self._cgroups is not None:
            self._cgroups.kill_all()  # frozen or not: every process of the session, not only the process group
        if process is not None and process.returncode is None:
            if isinstance(process, ForkedProcess):
                process.kill()
            with contextlib.suppress(ProcessLookupError):
                procs.kill_group(process.pid, procs.KILL)

    async def stop(self) -> None:
        wire, self._wire = self._wire, None
        if wire is not None:
            self._dropped_before += wire.reader.dropped
            wire.close()
        process = self._process
        self._kill()
        if process is not None and process.returncode is None:
            with anyio.move_on_after(5), anyio.CancelScope(shield=True):
                await process.wait()
        if self._conn_dir is not None:
            shutil.rmtree(self._conn_dir, ignore_errors=True)
            self._conn_dir = None
        if self._cgroups is not None:
            self._cgroups.remove()
            self._cgroups = None

    @property
    def frozen(self) -> bool:
        """True when the session's cgroup is frozen now: none of its processes runs (nor writes a file) until the next
        execute thaws it. False where the host has no freezer."""
        return self._cgroups is not None and self._cgroups.frozen()

    @property
    def out_of_memory(self) -> bool:
        """True when the session's cgroup memory limit was hit (the kernel was likely OOM-killed)."""
        return self._cgroups is not None and self._cgroups.oom_killed()


@dataclass
class _Execution:
    """One execution as `Kernel._collect` follows it: how far it got, and when."""

    run_id: str
    deadline: float
    outcome: Outcome = "ok"
    interrupted_at: float | None = None

    def wait(self, now: float) -> float:
        """How long to wait for the next frames: until the deadline, at most one poll interval."""
        return _POLL if self.interrupted_at is not None else max(0.001, min(_POLL, self.deadline - now))


async def _discard(event: KernelEvent) -> None:
    return None


def _stream_event(kind: str, frame: dict[str, Any]) -> KernelEvent | None:
    return StreamEvent("stderr" if frame.get("name") == "stderr" else "stdout", str(frame.get("text", "")))


def _display_event(kind: str, frame: dict[str, Any]) -> KernelEvent | None:
    data = frame.get("data", {})
    if not isinstance(data, dict):
        return None
    bundle = {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in data.items()}
    return DisplayEvent(bundle, is_result=kind == "result")


def _error_event(kind: str, frame: dict[str, Any]) -> KernelEvent | None:
    tb = frame.get("traceback", [])
    text = "\n".join(strip_ansi(str(line)) for line in tb) if isinstance(tb, list) else ""
    return ErrorEvent(str(frame.get("ename", "Error")), str(frame.get("evalue", "")), text)


def _clear_event(kind: str, frame: dict[str, Any]) -> KernelEvent | None:
    return ClearEvent()


_EVENT_READERS: dict[str, Callable[[str, dict[str, Any]], KernelEvent | None]] = {
    "stream": _stream_event,
    "display": _display_event,
    "result": _display_event,
    "error": _error_event,
    "clear": _clear_event,
}
"""The frames that become events, by type (`done` is `Kernel._collect`'s; the rest are ignored)."""


def _event(kind: str, frame: dict[str, Any]) -> KernelEvent | None:
    reader = _EVENT_READERS.get(kind)
    return None if reader is None else reader(kind, frame)
