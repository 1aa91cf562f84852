"""The server's side of the kernel zygote (zygote_process.py): start it in its sandbox, ask it for kernels.

A new kernel then costs a fork of a process that has already imported IPython, numpy, pandas and matplotlib
(a few milliseconds) instead of a Python start and those imports (about a second, more under load). Each forked
kernel isolates itself as the bwrap launch would (zygote_process.py says how); the server learns its host pid from
the credentials of its first message, puts it in the session's cgroups before any of the session's code runs, and
follows it through its status socket (`ForkedProcess`), which stands for the anyio process of a cold start.

Where the zygote cannot start or a fork cannot isolate itself (a kernel that refuses nested user namespaces, a
/proc the new pid namespace cannot be mounted over, ...), `Zygote.usable` turns false with one log line and kernels
start cold, each its own bwrap (the setting `kernel_zygote` turns the zygote off altogether).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import struct
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import anyio
from anyio.abc import Process

log = logging.getLogger(__name__)

_BOOT_TIMEOUT = 120.0
_FORK_TIMEOUT = 30.0
_UCRED = struct.Struct("iII")


class ZygoteUnavailable(Exception):
    """No kernel from the zygote: the caller starts the kernel cold."""


class ForkFailed(Exception):
    """The forked kernel could not isolate itself; the message says why."""


@dataclass(frozen=True)
class ZygoteLaunch:
    argv: tuple[str, ...]
    env: dict[str, str]
    runtime_dir: Path
    workspaces_dir: Path


CONTROL_FD = "{control_fd}"
"""The token in a ZygoteLaunch's argv that names the zygote's control socket descriptor."""


class ForkedProcess:
    """A kernel forked by the zygote, seen from the server: its first process (outside the kernel's pid namespace,
    the leader of its process group), the namespace's init (pid 1) and the kernel (pid 2), each through a pidfd,
    and the status socket on which the init reports the kernel's exit status."""

    def __init__(self, status: socket.socket, pid: int, init_pid: int, kernel_pid: int) -> None:
        self._status = status
        self.pid = pid
        self.init_pid = init_pid
        self.kernel_pid = kernel_pid
        self._pidfds: list[int | None] = [_pidfd(p) for p in (init_pid, kernel_pid, pid)]
        self._code: int | None = None

    @property
    def returncode(self) -> int | None:
        """The kernel's exit code (negative: the signal that ended it), None while it runs."""
        self._poll()
        return self._code

    def _poll(self) -> None:
        if self._code is not None or self._status.fileno() < 0:
            return
        while True:
            try:
                data = self._status.recv(256, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data = b""
            if not data:  # the first process is gone without a word: killed
                self._exited(-signal.SIGKILL)
                return
            if data.startswith(b"exit "):
                try:
                    self._exited(int(data[5:]))
                except ValueError:
                    self._exited(-signal.SIGKILL)
                return

    def _exited(self, code: int) -> None:
        self._code = code
        self._status.close()
        for fd in self._pidfds:
            if fd is not None:
                os.close(fd)
        self._pidfds = [None] * len(self._pidfds)

    async def wait(self) -> int:
        while (code := self.returncode) is None:
            with contextlib.suppress(OSError, anyio.ClosedResourceError):
                await anyio.wait_readable(self._status)
        return code

    def signal_kernel(self, sig: int) -> None:
        """Send `sig` to the kernel alone (its pidfd: never another process that got its pid)."""
        fd = self._pidfds[1]
        if fd is not None:
            with contextlib.suppress(ProcessLookupError, OSError):
                signal.pidfd_send_signal(fd, sig)

    def kill(self) -> None:
        """SIGKILL the namespace's init (every process in it dies with it), the kernel and the first process."""
        for fd in self._pidfds:
            if fd is not None:
                with contextlib.suppress(ProcessLookupError, OSError):
                    signal.pidfd_send_signal(fd, signal.SIGKILL)


def _pidfd(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)
    except OSError:
        return None


def _sender(ancillary: list[tuple[int, int, bytes]]) -> int:
    """The host pid in a message's SCM_CREDENTIALS (the kernel translates it into this process's pid namespace)."""
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
            return int(_UCRED.unpack(data[: _UCRED.size])[0])
    return 0


def _ppid(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])


class Zygote:
    """One per server. `start()` launches it and waits until it has preloaded; `spawn()` forks a kernel."""

    def __init__(self, launch: ZygoteLaunch) -> None:
        self.launch = launch
        self._process: Process | None = None
        self._control: socket.socket | None = None
        self._ready = anyio.Event()
        self.disabled: str | None = None
        """Why kernels start cold (None while the zygote is usable)."""
        self.threads = 0
        self.on_disable: Callable[[], None] | None = None
        """Called once when kernels start cold from then on."""

    @property
    def usable(self) -> bool:
        return self.disabled is None

    def disable(self, reason: str) -> None:
        if self.disabled is None:
            self.disabled = reason
            log.warning("ci-mcp local backend: kernels start cold, each its own bwrap (no zygote): %s", reason)
            if self.on_disable is not None:
                self.on_disable()
        self._ready.set()

    async def start(self) -> None:
        try:
            await self._boot()
        except Exception as exc:
            self.disable(f"the zygote did not start: {exc}")
            await self.aclose()
        finally:
            self._ready.set()

    async def _boot(self) -> None:
        launch = self.launch
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        log_path = launch.runtime_dir / "zygote.log"
        try:
            with open(log_path, "wb") as errors:
                self._process = await anyio.open_process(
                    [arg.replace(CONTROL_FD, str(theirs.fileno())) for arg in launch.argv],
                    env=launch.env,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=errors,
                    start_new_session=True,
                    pass_fds=(theirs.fileno(),),
                )
        finally:
            theirs.close()
        self._control = ours
        with anyio.fail_after(_BOOT_TIMEOUT):
            await anyio.wait_readable(ours)
        data = ours.recv(4096)
        try:
            hello = json.loads(data) if data else {}
        except ValueError:
            hello = {}
        if not hello.get("ready"):
            tail = log_path.read_text(errors="replace").strip().splitlines()[-1:] if log_path.exists() else []
            raise ZygoteUnavailable(str(hello.get("error") or (tail[0][:300] if tail else "it exited")))
        self.threads = int(hello.get("threads", 0))
        if self.threads > 1:
            log.info("ci-mcp zygote: %d threads at fork time (only the forking one continues)", self.threads)

    async def spawn(
        self,
        *,
        conn_dir: Path,
        workspace: Path,
        env: dict[str, str],
        limits: dict[str, int],
        argv: Sequence[str],
        log_fd: int,
        place: Callable[[list[int]], None],
    ) -> ForkedProcess:
        """A kernel forked for `workspace` (a directory of the sessions' parent) with the connection directory
        `conn_dir` (in the runtime directory); `place` puts its host pids in the session's cgroups before it goes on.
        Raises ZygoteUnavailable (start it cold instead) when there is no usable zygote or the fork failed."""
        await self._ready.wait()
        control = self._control
        if self.disabled is not None or control is None:
            raise ZygoteUnavailable(self.disabled or "the zygote is not running")
        if conn_dir.parent != self.launch.runtime_dir or workspace.parent != self.launch.workspaces_dir:
            raise ZygoteUnavailable(f"{workspace} is not in {self.launch.workspaces_dir}")
        request = {"conn": conn_dir.name, "workspace": workspace.name, "env": env, "limits": limits, "argv": list(argv)}
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            ours.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
            try:
                socket.send_fds(control, [json.dumps(request).encode()], [theirs.fileno(), log_fd])
            except OSError as exc:
                self.disable(f"the zygote is gone ({exc})")
                raise ZygoteUnavailable(self.disabled or "") from exc
            theirs.close()
            try:
                return await self._greet(ours, place)
            except TimeoutError as exc:
                raise ForkFailed(f"no answer within {_FORK_TIMEOUT:.0f} s") from exc
        except ForkFailed as exc:
            ours.close()
            self.disable(f"a forked kernel could not isolate itself: {exc}")
            raise ZygoteUnavailable(str(exc)) from exc
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()

    async def _greet(self, status: socket.socket, place: Callable[[list[int]], None]) -> ForkedProcess:
        with anyio.fail_after(_FORK_TIMEOUT):
            await anyio.wait_readable(status)
        data, ancillary, _, _ = status.recvmsg(2048, socket.CMSG_SPACE(_UCRED.size))
        if data != b"hello":
            raise ForkFailed(data.decode(errors="replace")[6:] if data else "the forked process exited")
        init = _sender(ancillary)
        if init <= 0:
            raise ForkFailed("no credentials on the kernel's first message")
        first = _ppid(init)
        try:
            place([first, init])
            status.send(b"go")
            with anyio.fail_after(_FORK_TIMEOUT):
                await anyio.wait_readable(status)
            data, ancillary, _, _ = status.recvmsg(2048, socket.CMSG_SPACE(_UCRED.size))
            kernel = _sender(ancillary)
            if data != b"kernel" or kernel <= 0:
                raise ForkFailed(data.decode(errors="replace")[6:] if data else "the kernel's init exited")
        except BaseException:
            for pid in (init, first):
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            raise
        return ForkedProcess(status, first, init, kernel)

    async def aclose(self) -> None:
        if self.disabled is None:
            self.disabled = "the server is shutting down"  # no log line: nothing falls back
        self._ready.set()  # nobody waits for a start that will not come
        control, self._control = self._control, None
        if control is not None:
            control.close()  # the zygote exits at the end of its control socket
        process, self._process = self._process, None
        if process is not None and process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            with anyio.move_on_after(5), anyio.CancelScope(shield=True):
                await process.wait()
