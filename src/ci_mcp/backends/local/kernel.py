"""One Jupyter kernel process and its client: start, execute with a deadline, interrupt, restart, stop.

This module is the boundary for jupyter_client: kernel messages are parsed here into plain `KernelEvent`s,
and only JSON from the kernel is ever decoded (the kernel is untrusted). The process is ours (not
jupyter_client's KernelManager) so that it can be wrapped by the sandbox launcher; kernels talk over IPC
sockets in a private runtime directory, and interrupts go as `interrupt_request` messages on the control
channel, which works through a PID namespace. Where the host gives the kernel a cgroup (cgroups.py), it is frozen
from the end of one execution to the start of the next.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import re
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import anyio
from anyio.abc import Process

from ci_mcp.backends.local import cgroups, procs
from ci_mcp.backends.local.zygote import ForkedProcess, Zygote, ZygoteUnavailable

if TYPE_CHECKING:
    from jupyter_client.asynchronous.client import AsyncKernelClient

log = logging.getLogger(__name__)

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_START_TIMEOUT = 60.0
_POLL = 0.25
CONN_DIR = "{conn_dir}"
KERNEL_FLAGS = (
    "--IPKernelApp.parent_handle=0",
    "--HistoryManager.enabled=False",
)
"""ipykernel options (kernel_launcher.py turns off ipykernel's post-execute sleep). Messages are not signed (an
empty key in the connection file): the IPC sockets live in a private 0700 directory, so whoever can connect to them
can also read the connection file and its key; the key would protect nothing and costs an HMAC on every message
both ways. Each kernel's sandbox binds only its own connection directory, so one session's code cannot reach
another kernel's sockets either way."""


MAX_MESSAGE_BYTES = 256 * 1024 * 1024
"""Largest message the server takes from a kernel's output stream. The server is not sandboxed, and a message is
received and parsed whole before any cap of ours applies; zmq refuses a bigger one before allocating it (and drops
the connection, which the kernel client then opens again)."""


class _BoundedClient:
    """Builds kernel clients whose output (iopub) socket refuses messages over `max_message_bytes`. The client class
    is made at the first kernel start, when jupyter_client and zmq are imported (not on the server's start path)."""

    max_message_bytes = MAX_MESSAGE_BYTES
    _made: Any = None

    @classmethod
    def create(cls, context: Any) -> AsyncKernelClient:
        if cls._made is None:
            import zmq
            from jupyter_client.asynchronous.client import AsyncKernelClient

            holder = cls

            class BoundedKernelClient(AsyncKernelClient):
                def connect_iopub(self, identity: bytes | None = None) -> Any:
                    # Set before the socket connects; pyzmq applies a context's defaults at creation.
                    options = self.context.sockopts
                    options[zmq.MAXMSGSIZE] = holder.max_message_bytes
                    try:
                        return super().connect_iopub(identity)
                    finally:
                        options.pop(zmq.MAXMSGSIZE, None)

            cls._made = BoundedKernelClient
        client: AsyncKernelClient = cls._made(context=context)
        return client


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


def _load_client_modules() -> None:
    """Import jupyter_client and zmq (about 50 ms): at the first kernel start, in a worker thread, so that serving
    `initialize` never waits for them (issue 12)."""
    import jupyter_client.asynchronous.client  # noqa: F401
    import jupyter_client.connect  # noqa: F401
    import zmq.asyncio  # noqa: F401


class KernelStartError(Exception):
    """The kernel process did not come up; the message says why in plain words."""


class Kernel:
    """A kernel process with its client. Not safe for concurrent `execute` calls: the session serialises them."""

    def __init__(self, launch: KernelLaunch) -> None:
        self.launch = launch
        self._process: Process | ForkedProcess | None = None
        self._client: AsyncKernelClient | None = None
        self._conn_dir: Path | None = None
        self._last_reply_status = ""
        self._kernel_pid: int | None = None
        self._conn_file_marker = ""
        self._cgroups: cgroups.KernelCgroups | None = None
        self._iopub_monitor: Any = None  # a zmq.asyncio.Socket
        self.dropped_messages = 0
        """Output messages refused for their size since the kernel started (the backend reports new ones)."""
        self.started_at = 0.0

    @property
    def max_message_bytes(self) -> int:
        return _BoundedClient.max_message_bytes

    @property
    def alive(self) -> bool:
        return self._process is not None and self._process.returncode is None

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    async def start(self) -> None:
        await anyio.to_thread.run_sync(_load_client_modules)
        import zmq.asyncio
        from jupyter_client.connect import write_connection_file

        launch = self.launch
        self._conn_dir = launch.runtime_dir / ("k-" + secrets.token_hex(6))
        self._conn_dir.mkdir(parents=True, mode=0o700)
        conn_file, info = write_connection_file(
            str(self._conn_dir / "kernel.json"),
            transport="ipc",
            ip=str(self._conn_dir / "ipc"),
            key=b"",  # unsigned messages: see KERNEL_FLAGS
        )
        self._conn_file_marker = conn_file
        if launch.cgroup_limits is not None:
            self._cgroups = cgroups.create(*launch.cgroup_limits)
        if launch.mpl_seed is not None and launch.mpl_seed.is_dir():
            shutil.copytree(launch.mpl_seed, self._conn_dir / "mpl")
        env = {k: v.replace(CONN_DIR, str(self._conn_dir)) for k, v in launch.env.items()}
        kernel_args = ["-f", conn_file, *KERNEL_FLAGS]
        log = open(self._conn_dir / "kernel.log", "wb")  # noqa: SIM115 - handed to the child, closed below
        try:
            self._process = await self._fork(env, kernel_args, log.fileno())
            if self._process is None:
                self._process = await self._spawn(env, kernel_args, log)
        finally:
            log.close()
        # One process-wide zmq context for every kernel client: a per-client context that reaches the garbage
        # collector with sockets open blocks forever in zmq_ctx_term; the shared one is never collected.
        context = zmq.asyncio.Context.instance()
        # Reconnect to a socket that is not bound yet after 10 ms, not zmq's 100 ms: the client connects before the
        # kernel has bound its IPC sockets, and a forked kernel binds them within tens of milliseconds.
        context.sockopts.setdefault(zmq.RECONNECT_IVL, 10)
        client = _BoundedClient.create(context)
        client.load_connection_info(info)
        self._kernel_pid = None
        client.start_channels(hb=False)
        self._client = client
        self._watch_iopub()
        try:
            await self._wait_ready()
        except BaseException:
            await self.stop()
            raise
        if isinstance(self._process, ForkedProcess):
            self._kernel_pid = self._process.kernel_pid
        else:
            self._kernel_pid = procs.find_kernel(self._process.pid, self._conn_file_marker)
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

    async def _wait_ready(self) -> None:
        """Wait until the kernel answers on shell AND its iopub stream reaches us (SUB sockets join late)."""
        client = self._require_client()
        deadline = time.monotonic() + _START_TIMEOUT
        asked: set[str] = set()
        wait = 0.01  # asked again at growing intervals: a forked kernel answers within tens of milliseconds
        while True:
            if not self.alive:
                raise KernelStartError(
                    f"The kernel process exited with code {self.returncode} while starting"
                    f"{self._log_tail()}. Run `ci-mcp doctor` to see why."
                )
            if time.monotonic() > deadline:
                raise KernelStartError(f"The kernel did not answer within {_START_TIMEOUT:.0f} s. Run `ci-mcp doctor`.")
            asked.add(client.kernel_info())
            try:
                msg = await client.get_iopub_msg(timeout=wait)
                if msg.get("parent_header", {}).get("msg_id") in asked:
                    break
                if msg.get("msg_type") == "iopub_welcome":
                    continue  # the output stream is connected now: ask at once
            except queue.Empty:
                pass
            wait = min(0.2, wait * 2)
        # Drop the answers to our kernel_info requests that are already here. Later ones need no wait: every reader
        # of the kernel's messages skips those sent for another request (`_collect`, `_replied`).
        for get in (client.get_iopub_msg, client.get_shell_msg):
            while True:
                try:
                    await get(timeout=0)
                except queue.Empty:
                    break

    def _watch_iopub(self) -> None:
        import zmq

        client = self._require_client()
        self._iopub_monitor = client.iopub_channel.socket.get_monitor_socket(zmq.EVENT_DISCONNECTED)

    async def _iopub_dropped(self) -> bool:
        """True when the output stream's connection dropped (a message over MAX_MESSAGE_BYTES); it is then opened
        again, so later output arrives. Messages sent meanwhile are lost; the run's end is still seen from the
        shell reply."""
        import zmq

        monitor = self._iopub_monitor
        if monitor is None:
            return False
        dropped = False
        while True:
            try:
                await monitor.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            dropped = True
        if dropped:
            self.dropped_messages += 1
            client = self._require_client()
            self._close_iopub_monitor()
            client.iopub_channel.stop()
            client._iopub_channel = None
            client.iopub_channel.start()
            self._watch_iopub()
        return dropped

    def _close_iopub_monitor(self) -> None:
        import zmq

        monitor, self._iopub_monitor = self._iopub_monitor, None
        if monitor is None:
            return
        client = self._client
        if client is not None:
            with contextlib.suppress(zmq.ZMQError):
                client.iopub_channel.socket.disable_monitor()
        monitor.close(linger=0)

    def _log_tail(self) -> str:
        if self._conn_dir is None:
            return ""
        try:
            lines = (self._conn_dir / "kernel.log").read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return f" ({lines[-1][:300]})" if lines else ""

    def _require_client(self) -> AsyncKernelClient:
        if self._client is None:
            raise RuntimeError("kernel not started")
        return self._client

    @property
    def returncode(self) -> int | None:
        return None if self._process is None else self._process.returncode

    async def execute(self, code: str, *, deadline: float, sink: EventSink) -> Outcome:
        """Run `code`; report every output to `sink`; return how it ended.

        On the deadline, or on cancellation, the kernel is interrupted; if it does not come back within a
        grace period the caller sees "timeout" (or the cancellation) and must `restart()`.
        """
        client = self._require_client()
        if self._cgroups is not None:
            self._cgroups.thaw()
        msg_id = client.execute(code, store_history=True, allow_stdin=False, stop_on_error=True)
        try:
            return await self._collect(msg_id, deadline, sink)
        except anyio.get_cancelled_exc_class():
            with anyio.CancelScope(shield=True):
                await self.interrupt()
                outcome = await self._collect(msg_id, time.monotonic() + 2.0, _discard)
                if outcome == "timeout":
                    await self.restart()
            raise
        finally:
            with anyio.CancelScope(shield=True):
                await self._freeze()

    async def _freeze(self) -> None:
        """Between runs the session's cgroup is frozen: threads the code left running get no CPU until the next
        run thaws it (where the host has a freezer). A frozen kernel is still killed by stop()."""
        # An idle kernel is frozen at once: ask and look once here, and wait in a thread only when a task is slow
        # to stop (saves a thread round trip on every run; issue 12).
        groups = self._cgroups
        if groups is not None and groups.can_freeze and self.alive and not groups.freeze(limit_seconds=0):
            await anyio.to_thread.run_sync(groups.freeze)

    async def _collect(self, msg_id: str, deadline: float, sink: EventSink) -> Outcome:
        """Read the messages of execute request `msg_id` until it has replied and gone idle (or the deadline, the
        interrupt's grace period or the process runs out); report its outputs to `sink`; return how it ended."""
        run = _Execution(msg_id, deadline, self._require_client())
        while not run.over:
            now = time.monotonic()
            ended = await self._enforce_limits(run, now)
            if ended is not None:
                return ended
            if run.reply_without_idle(now):
                break  # the reply came but its idle status was lost: the run is over all the same
            if run.idle:  # execute_reply normally precedes idle; this is the rare other order
                await self._await_reply(run, run.wait(now))
            else:
                await self._read_output(run, run.wait(now), sink)
        await self._iopub_dropped()  # a refusal seen only as the run ended still counts for this run
        return "interrupted" if run.interrupted_at is not None else run.outcome

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

    async def _await_reply(self, run: _Execution, wait: float) -> None:
        """Idle was seen before the execute_reply: wait for the reply on the shell channel."""
        reply = await _receive(run.client.shell_channel.socket, wait)
        if reply is not None and reply.parent_id == run.msg_id:
            run.replied = True

    async def _read_output(self, run: _Execution, wait: float, sink: EventSink) -> None:
        """The next output message: handled by its type when it is this request's; a quiet spell checks the
        connection and the shell reply."""
        msg = await _receive(run.client.iopub_channel.socket, wait)
        if msg is None:
            await self._on_quiet(run)
            return
        if msg.parent_id != run.msg_id:
            return  # not decoded further: another request's message
        content = msg.content()
        if msg.msg_type == "status":
            await self._on_status(run, content)
            return
        event = _event(msg.msg_type, content)
        if event is not None:
            if isinstance(event, ErrorEvent):
                run.outcome = "error"
            await sink(event)

    async def _on_quiet(self, run: _Execution) -> None:
        """No output within the wait: reopen a dropped output stream; look for the reply (its status tells an
        error the output stream may have lost)."""
        if await self._iopub_dropped():
            run.client = self._require_client()
        if not run.replied and await self._replied(run.msg_id):
            run.replied, run.replied_at = True, time.monotonic()
            if run.interrupted_at is None and run.outcome == "ok" and self._last_reply_status == "error":
                run.outcome = "error"

    async def _on_status(self, run: _Execution, content: dict[str, Any]) -> None:
        """A status message: idle ends the run once the reply is in too."""
        if content.get("execution_state") == "idle":
            run.idle = True
            run.replied = run.replied or await self._replied(run.msg_id)

    def kill_strays(self) -> int:
        """Kill every process of this kernel's sandbox except the kernel (and the sandbox processes above it);
        returns how many there were. With cgroups, what belongs to the session is its cgroup's membership, frozen
        while it is read, and the group stays frozen after."""
        if self._process is None or not self.alive:
            return 0
        if self._kernel_pid is None:
            return 0
        if self._cgroups is not None:
            keep = {self._kernel_pid, *procs.ancestors(self._kernel_pid)}
            return self._cgroups.kill_except(keep)
        return procs.kill_strays(self._process.pid, self._kernel_pid)

    async def _replied(self, msg_id: str) -> bool:
        """Drain waiting shell replies; True when the execute_reply for `msg_id` is among them."""
        client = self._require_client()
        while True:
            reply = await _receive(client.shell_channel.socket, 0)
            if reply is None:
                return False
            if reply.parent_id == msg_id:
                self._last_reply_status = str(reply.content().get("status", ""))
                return True

    async def interrupt(self) -> None:
        """Ask the kernel to raise KeyboardInterrupt (control channel; works inside a PID namespace)."""
        client = self._client
        if client is None or not self.alive:
            return
        msg = client.session.msg("interrupt_request", {})
        client.control_channel.send(msg)
        if not self.launch.wrapper and self._process is not None:
            # Without a sandbox wrapper the kernel is our direct child: a signal is quicker and always works.
            with contextlib.suppress(ProcessLookupError):
                procs.kill_group(self._process.pid, signal.SIGINT)

    async def restart(self) -> None:
        await self.stop()
        await self.start()

    async def stop(self) -> None:
        self._close_iopub_monitor()
        client, process = self._client, self._process
        self._client = None
        if client is not None:
            client.stop_channels()
        if self._cgroups is not None:
            self._cgroups.kill_all()  # frozen or not: every process of the session, not only the process group
        if process is not None and process.returncode is None:
            if isinstance(process, ForkedProcess):
                process.kill()
            with contextlib.suppress(ProcessLookupError):
                procs.kill_group(process.pid, procs.KILL)
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
    """One execute request's messages as `Kernel._collect` reads them: how far it got, and when."""

    msg_id: str
    deadline: float
    client: AsyncKernelClient
    outcome: Outcome = "ok"
    idle: bool = False
    replied: bool = False
    interrupted_at: float | None = None
    replied_at: float | None = None

    @property
    def over(self) -> bool:
        return self.idle and self.replied

    def reply_without_idle(self, now: float) -> bool:
        """The reply came over a second ago and its idle status never did."""
        return self.replied and not self.idle and self.replied_at is not None and now - self.replied_at > 1.0

    def wait(self, now: float) -> float:
        """How long to wait for the next message: until the deadline, at most one poll interval."""
        return _POLL if self.interrupted_at is not None else max(0.001, min(_POLL, self.deadline - now))


_DELIMITER = b"<IDS|MSG>"


@dataclass(frozen=True)
class _Message:
    """A kernel message read off its socket: header and parent decoded, the content only when asked for."""

    parent_id: str
    msg_type: str
    raw_content: bytes

    def content(self) -> dict[str, Any]:
        try:
            value = json.loads(self.raw_content)
        except ValueError:
            return {}
        return value if isinstance(value, dict) else {}


_UNREADABLE = _Message("", "", b"{}")


async def _receive(socket: Any, timeout: float) -> _Message | None:
    """The next message on `socket` within `timeout` seconds (None: none came). In place of jupyter_client's
    `get_*_msg`, which decodes every part of every message and parses each header date with dateutil: here
    only JSON is decoded (the kernel is untrusted), and a message that is not the awaited one is dropped after its
    parent header (issue 12). Messages are unsigned (see KERNEL_FLAGS), so there is no signature to check; a
    message that cannot be read is dropped as someone else's."""
    if not await socket.poll(int(timeout * 1000)):
        return None
    frames: list[bytes] = await socket.recv_multipart()
    try:
        parts = frames[frames.index(_DELIMITER) + 1 :]
        header, parent = json.loads(parts[1]), json.loads(parts[2])
        return _Message(str(parent.get("msg_id", "")), str(header.get("msg_type", "")), parts[4])
    except (ValueError, IndexError, AttributeError):
        return _UNREADABLE


async def _discard(event: KernelEvent) -> None:
    return None


def _stream_event(mtype: str, content: dict[str, Any]) -> KernelEvent | None:
    return StreamEvent("stderr" if content.get("name") == "stderr" else "stdout", str(content.get("text", "")))


def _display_event(mtype: str, content: dict[str, Any]) -> KernelEvent | None:
    data = content.get("data", {})
    if not isinstance(data, dict):
        return None
    bundle = {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in data.items()}
    return DisplayEvent(bundle, is_result=mtype == "execute_result")


def _error_event(mtype: str, content: dict[str, Any]) -> KernelEvent | None:
    tb = content.get("traceback", [])
    text = "\n".join(strip_ansi(str(line)) for line in tb) if isinstance(tb, list) else ""
    return ErrorEvent(str(content.get("ename", "Error")), str(content.get("evalue", "")), text)


def _clear_event(mtype: str, content: dict[str, Any]) -> KernelEvent | None:
    return ClearEvent()


_EVENT_READERS: dict[str, Callable[[str, dict[str, Any]], KernelEvent | None]] = {
    "stream": _stream_event,
    "display_data": _display_event,
    "execute_result": _display_event,
    "update_display_data": _display_event,
    "error": _error_event,
    "clear_output": _clear_event,
}
"""The output messages that become events, by Jupyter message type (status is `Kernel._on_status`'s; the rest
are ignored)."""


def _event(mtype: str, content: dict[str, Any]) -> KernelEvent | None:
    reader = _EVENT_READERS.get(mtype)
    return None if reader is None else reader(mtype, content)
