"""Finding and ending the processes a kernel left behind, from the host side, through /proc (or psutil).

Where there is no /proc (macOS, Windows) the same questions go to psutil; on Linux /proc is read directly, as a
process's `children` file answers at once where psutil would scan every process.

After each run every process in the session's sandbox other than the kernel itself is killed: a run's background
processes do not outlive it, and a fork bomb's survivors are gone before the next call. Where the session has a
cgroup, its membership says what to kill (cgroups.py); the walk of the process tree here is the fallback.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

import psutil

_PROC = Path("/proc")
USE_PROC = (_PROC / "self" / "stat").exists()
"""Read /proc (Linux) rather than ask psutil."""
KILL = getattr(signal, "SIGKILL", signal.SIGTERM)  # Windows has no SIGKILL; SIGTERM there is TerminateProcess


def read_pseudo(path: str | Path) -> str:
    """A small /proc or cgroup file's text, read in one call (about half the time of Path.read_text, which matters
    on every run's path: issue 12). Raises OSError as reading it would."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        chunks = [os.read(fd, 65536)]
        while chunks[-1]:
            chunks.append(os.read(fd, 65536))
    finally:
        os.close(fd)
    return b"".join(chunks).decode("utf-8", errors="replace")


def write_pseudo(path: str | Path, text: str) -> None:
    """Write `text` to a cgroup (or /proc) file in one call, as Path.write_text does in about twice the time (the
    freezer is written twice on every run's path: issue 12). Raises OSError as writing it would."""
    fd = os.open(path, os.O_WRONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def kill_group(pid: int, sig: int) -> None:
    """Send `sig` to the process group `pid` leads (POSIX), or to the process alone where there are no groups."""
    killpg = getattr(os, "killpg", None)
    if killpg is not None:
        killpg(pid, sig)
    else:
        os.kill(pid, sig)


def children(pid: int) -> list[int]:
    if not USE_PROC:
        try:
            return [child.pid for child in psutil.Process(pid).children()]
        except psutil.Error:
            return []
    found: list[int] = []
    try:
        tasks = list((_PROC / str(pid) / "task").iterdir())
    except OSError:
        return found
    for task in tasks:
        try:
            text = (task / "children").read_text()
        except OSError:
            continue
        found.extend(int(p) for p in text.split())
    return found


def descendants(pid: int, limit: int = 100_000) -> list[int]:
    out: list[int] = []
    stack = [pid]
    while stack and len(out) < limit:
        for child in children(stack.pop()):
            out.append(child)
            stack.append(child)
    return out


def cmdline(pid: int) -> str:
    """The arguments of `pid` joined by spaces ("" when it is gone or hidden)."""
    if not USE_PROC:
        try:
            return " ".join(psutil.Process(pid).cmdline())
        except psutil.Error:
            return ""
    try:
        return (_PROC / str(pid) / "cmdline").read_bytes().rstrip(b"\0").replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def find_kernel(root: int, marker: str) -> int | None:
    """The host pid of the process (root or a descendant) whose command line contains `marker`."""
    for pid in [root, *descendants(root, limit=64)]:
        if marker in cmdline(pid) and "bwrap" not in cmdline(pid).split(" ", 1)[0]:
            return pid
    return None


def kill_strays(root: int, kernel: int, limit_seconds: float = 2.0) -> int:
    """SIGKILL every live descendant of `root` except `kernel` and its ancestors, until none is left twice in a row
    (a fork bomb races us) or the time is up; returns how many were killed. Zombies are left to their parent."""
    killed = 0
    quiet_rounds = 0
    deadline = time.monotonic() + limit_seconds
    while quiet_rounds < 2 and time.monotonic() < deadline:
        strays = [p for p in descendants(root) if p != kernel and not _is_ancestor_of(p, kernel) and not _zombie(p)]
        if not strays:
            if killed == 0:
                return 0  # nothing was running: one look is enough
            quiet_rounds += 1
            continue
        quiet_rounds = 0
        for pid in strays:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, KILL)
                killed += 1
        time.sleep(0.005)
    return killed


def ancestors(pid: int, depth: int = 16) -> list[int]:
    """The parents of `pid`, nearest first, up to this process (included) or else up to (not including) init. What is
    above this process cannot be in a sandbox it started, so the walk stops there: it used to climb past the server
    and its client to init, half the time of each run's stray check (issue 12)."""
    found: list[int] = []
    current, me = pid, os.getpid()
    for _ in range(depth):
        parent = _ppid(current)
        if parent is None or parent <= 1:
            break
        found.append(parent)
        if parent == me:
            break
        current = parent
    return found


def _zombie(pid: int) -> bool:
    if not USE_PROC:
        try:
            return psutil.Process(pid).status() in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD)
        except psutil.Error:
            return True
    try:
        stat = (_PROC / str(pid) / "stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def _is_ancestor_of(pid: int, child: int) -> bool:
    return pid in ancestors(child)


def _ppid(pid: int) -> int | None:
    if not USE_PROC:
        try:
            return int(psutil.Process(pid).ppid())
        except psutil.Error:
            return None
    try:
        stat = read_pseudo(f"/proc/{pid}/stat")
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])
