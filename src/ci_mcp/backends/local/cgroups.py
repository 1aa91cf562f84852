"""Per-session cgroups, where the host lets us: a memory limit and a process limit for all of a session's
processes, its CPU usage, and freezing it between runs.

Which cgroup version serves each control is chosen once, at start, from the mounted hierarchies (/proc/self/mounts)
and what this process can actually write: cgroup v2 (one directory: `memory.max`, `pids.max`, `cgroup.freeze`,
`cpu.stat`) when the unified hierarchy offers that control, else the cgroup v1 hierarchy for it (`memory`, `pids`,
`freezer`, `cpuacct`). On a hybrid host that means v1 limits with the v2 freeze. Where nothing can be written, the
resource limits of kernel_launcher (address space, processes, file size, CPU time) are the only limits and nothing is
frozen.

The kernel command is prefixed with a tiny shell that joins every group before it execs the sandbox, so every
process of the session is inside them from its first instruction, and membership (not a count of tasks) says what
belongs to the session. The rule between runs (kernel.py): the group is frozen when a run ends and thawed when the
next begins, so threads the code left running get no CPU, and every process in it but the kernel and the sandbox's
own is killed.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import signal
import time
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Literal

from ci_mcp.backends.local.procs import read_pseudo, write_pseudo

Control = Literal["memory", "pids", "freeze", "cpu"]
CONTROLS: tuple[Control, ...] = ("memory", "pids", "freeze", "cpu")
_V1_CONTROLLER: dict[Control, str] = {"memory": "memory", "pids": "pids", "freeze": "freezer", "cpu": "cpuacct"}
_V2_FILE: dict[Control, str] = {
    "memory": "memory.max",
    "pids": "pids.max",
    "freeze": "cgroup.freeze",
    "cpu": "cpu.stat",
}
_PARENT = "ci-mcp"
_MOUNTS = Path("/proc/self/mounts")


@dataclass(frozen=True)
class Hierarchy:
    """Where one set of controls lives: the ci-mcp directory in a mounted hierarchy of cgroup `version`."""

    version: int
    parent: Path
    controls: frozenset[Control]


@dataclass(frozen=True)
class Layout:
    hierarchies: tuple[Hierarchy, ...]

    def version_of(self, control: Control) -> int | None:
        return next((h.version for h in self.hierarchies if control in h.controls), None)

    @property
    def limits(self) -> bool:
        return self.version_of("memory") is not None and self.version_of("pids") is not None

    def describe(self) -> str:
        """One line for `doctor`: which version does what."""
        if not self.hierarchies:
            return (
                "no cgroup (v1 or v2) can be written here: memory and processes are held only by rlimits, and "
                "threads the code leaves running keep using CPU between runs (run the server as root or with a "
                "delegated cgroup)"
            )
        words = {"memory": "memory limit", "pids": "process limit", "freeze": "freeze between runs", "cpu": "CPU usage"}
        parts = [f"{words[c]} via cgroup v{v}" for c in CONTROLS if (v := self.version_of(c)) is not None]
        missing = [words[c] for c in CONTROLS if self.version_of(c) is None]
        return ", ".join(parts) + (f"; not available: {', '.join(missing)}" if missing else "")


def _mounts() -> tuple[dict[str, Path], Path | None]:
    """The v1 hierarchy of each controller we use, and the unified (v2) mount, from /proc/self/mounts."""
    v1: dict[str, Path] = {}
    v2: Path | None = None
    try:
        lines = _MOUNTS.read_text().splitlines()
    except OSError:
        return v1, v2
    for line in lines:
        parts = line.split()
        if len(parts) < 4:
            continue
        where = Path(parts[1].replace("\\040", " "))
        if parts[2] == "cgroup2" and v2 is None:
            v2 = where
        elif parts[2] == "cgroup":
            for option in parts[3].split(","):
                if option in _V1_CONTROLLER.values():
                    v1.setdefault(option, where)
    return v1, v2


def _writable_parent(mount: Path) -> Path | None:
    parent = mount / _PARENT
    try:
        parent.mkdir(exist_ok=True)
        probe = parent / f"probe-{os.getpid()}-{secrets.token_hex(3)}"
        probe.mkdir()
        probe.rmdir()
    except OSError:
        return None
    return parent


def _v2_controls(mount: Path) -> tuple[Path, frozenset[Control]] | None:
    """What a session directory under `mount`/ci-mcp offers. memory and pids need the controller delegated to our
    directory (listed in its cgroup.controllers); the freeze and cpu.stat are part of every v2 group."""
    parent = _writable_parent(mount)
    if parent is None:
        return None
    with contextlib.suppress(OSError):
        offered = set((parent / "cgroup.controllers").read_text().split())
        enabled = set((parent / "cgroup.subtree_control").read_text().split())
        wanted = {"memory", "pids"} & offered - enabled
        if wanted:
            (parent / "cgroup.subtree_control").write_text(" ".join(f"+{c}" for c in sorted(wanted)))
    probe = parent / f"probe-{os.getpid()}-{secrets.token_hex(3)}"
    try:
        probe.mkdir()
        found = frozenset(c for c in CONTROLS if (probe / _V2_FILE[c]).exists())
        probe.rmdir()
    except OSError:
        return None
    return parent, found


def probe(versions: Iterable[int] = (2, 1)) -> Layout:
    """For each control, the first of `versions` (in order) whose hierarchy can be written here."""
    order = tuple(versions)
    v1_mounts, v2_mount = _mounts()
    v2 = _v2_controls(v2_mount) if 2 in order and v2_mount is not None else None
    v1: dict[Control, Path] = {}
    if 1 in order:
        for control, controller in _V1_CONTROLLER.items():
            mount = v1_mounts.get(controller)
            parent = _writable_parent(mount) if mount is not None else None
            if parent is not None:
                v1[control] = parent
    chosen: dict[tuple[int, Path], set[Control]] = {}
    for control in CONTROLS:
        for version in order:
            if version == 2 and v2 is not None and control in v2[1]:
                chosen.setdefault((2, v2[0]), set()).add(control)
                break
            if version == 1 and control in v1:
                chosen.setdefault((1, v1[control]), set()).add(control)
                break
    _sweep([parent for _, parent in chosen])
    return Layout(tuple(Hierarchy(v, p, frozenset(cs)) for (v, p), cs in chosen.items()))


def _sweep(parents: Iterable[Path]) -> None:
    """Remove the session groups of servers that are gone (killed, so they could not clean up): their processes are
    killed and thawed first (a task frozen by the v1 freezer ignores even the SIGKILL its dead parent sent it until
    it is thawed). A group is named after the server that made it; groups of live servers are never touched."""
    dead: list[Path] = []
    for parent in parents:
        with contextlib.suppress(OSError):
            for group in parent.iterdir():
                owner = _OWNED.match(group.name)
                if group.is_dir() and owner is not None and not _alive(int(owner[1]), int(owner[2])):
                    dead.append(group)
    for group in dead:  # every hierarchy first: the processes die only once their freezer group is thawed too
        with contextlib.suppress(OSError):
            (group / "cgroup.kill").write_text("1")
        with contextlib.suppress(OSError, ValueError):
            for pid in (group / "cgroup.procs").read_text().split():
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(int(pid), signal.SIGKILL)
        for name, value in (("freezer.state", "THAWED"), ("cgroup.freeze", "0")):
            with contextlib.suppress(OSError):
                (group / name).write_text(value)
    deadline = time.monotonic() + 0.5
    for group in dead:
        while True:
            try:
                group.rmdir()
                break
            except FileNotFoundError:
                break
            except OSError:
                if time.monotonic() > deadline:
                    break  # still exiting: the next start removes it
                time.sleep(0.005)


_OWNED = re.compile(r"^s(\d+)-(\d+)-[0-9a-f]+$")


def _start_time(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def _alive(pid: int, started: int) -> bool:
    return _start_time(pid) == started


@cache
def _owner_tag() -> str:
    """This server in a group name: its pid and start time (a reused pid has another start time)."""
    return f"s{os.getpid()}-{_start_time(os.getpid())}"


@cache
def layout() -> Layout:
    """The layout this server uses, chosen once (v2 where it offers a control, else v1)."""
    return probe()


@dataclass(frozen=True)
class Group:
    version: int
    path: Path
    controls: frozenset[Control]


@dataclass(frozen=True)
class KernelCgroups:
    groups: tuple[Group, ...]

    @property
    def dirs(self) -> tuple[Path, ...]:
        return tuple(g.path for g in self.groups)

    def _group(self, control: Control) -> Group | None:
        return next((g for g in self.groups if control in g.controls), None)

    @property
    def can_freeze(self) -> bool:
        return self._group("freeze") is not None

    def wrapper(self) -> tuple[str, ...]:
        procs = [str(d / "cgroup.procs") for d in self.dirs]
        script = " && ".join(f'echo $$ > "${i + 1}"' for i in range(len(procs)))
        return ("/bin/sh", "-c", f'{script} && shift {len(procs)} && exec "$@"', "ci-mcp-cgroup", *procs)

    def add(self, pids: Iterable[int]) -> None:
        """Put `pids` in every group of the session: a kernel forked by the zygote (zygote.py), which waits for this
        before it runs anything of the session's. Raises OSError when a group refuses them."""
        for d in self.dirs:
            for pid in pids:
                (d / "cgroup.procs").write_text(str(pid))

    def members(self) -> list[int]:
        """Every process (thread-group leader) in the session's groups, as host pids."""
        found: set[int] = set()
        for d in self.dirs:
            with contextlib.suppress(OSError, ValueError):
                found.update(int(p) for p in read_pseudo(d / "cgroup.procs").split())
        return sorted(found)

    def oom_killed(self) -> bool:
        group = self._group("memory")
        if group is None:
            return False
        if group.version == 2:
            return _counter(group.path / "memory.events", "oom_kill") > 0
        if _counter(group.path / "memory.oom_control", "oom_kill") > 0:
            return True
        with contextlib.suppress(OSError, ValueError):
            return int((group.path / "memory.failcnt").read_text()) > 0
        return False

    def frozen(self) -> bool:
        group = self._group("freeze")
        if group is None:
            return False
        if group.version == 2:
            return _counter(group.path / "cgroup.events", "frozen") == 1
        with contextlib.suppress(OSError):
            return read_pseudo(group.path / "freezer.state").strip() == "FROZEN"
        return False

    def freeze(self, limit_seconds: float = 2.0) -> bool:
        """Stop every task of the session; True once all are stopped (a task stuck in the kernel can delay it)."""
        group = self._group("freeze")
        if group is None:
            return False
        try:
            if group.version == 2:
                write_pseudo(group.path / "cgroup.freeze", "1")
            else:
                write_pseudo(group.path / "freezer.state", "FROZEN")
        except OSError:
            return False
        deadline = time.monotonic() + limit_seconds
        pause = 0.0001  # an idle kernel stops within a fraction of a millisecond: look again soon, then less often
        while not self.frozen():
            if time.monotonic() > deadline:
                return False
            time.sleep(pause)
            pause = min(pause * 2, 0.002)
        return True

    def thaw(self) -> None:
        group = self._group("freeze")
        if group is None:
            return
        with contextlib.suppress(OSError):
            if group.version == 2:
                write_pseudo(group.path / "cgroup.freeze", "0")
            else:
                write_pseudo(group.path / "freezer.state", "THAWED")

    def kill_except(self, keep: Collection[int], limit_seconds: float = 2.0) -> int:
        """SIGKILL every process in the session's groups but `keep`, with the groups frozen so that nothing forks
        meanwhile, until a pass finds none (or the time is up); returns how many were killed. The groups are left
        frozen when they can be. Zombies are left to their parent."""
        killed = 0
        deadline = time.monotonic() + limit_seconds
        while True:
            if not self.frozen():  # as the run's end left it, mostly: a write to the freezer costs more (issue 12)
                self.freeze()
            strays = [p for p in self.members() if p not in keep and not _exited(p)]
            if not strays:
                return killed
            for pid in strays:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
                    killed += 1
            freezer = self._group("freeze")
            if freezer is not None and freezer.version == 1:
                # A task frozen by the v1 freezer acts on SIGKILL only once thawed: move the killed ones out to the
                # (thawed) parent group, where they die at once, and leave the kernel frozen.
                for pid in strays:
                    with contextlib.suppress(OSError):
                        (freezer.path.parent / "cgroup.procs").write_text(str(pid))
            _wait_exited(strays, deadline)
            if time.monotonic() > deadline:
                self.freeze()
                return killed

    def kill_all(self) -> None:
        """SIGKILL every task of the session, frozen or not."""
        for group in self.groups:
            if group.version == 2 and (group.path / "cgroup.kill").exists():
                with contextlib.suppress(OSError):
                    (group.path / "cgroup.kill").write_text("1")
        for pid in self.members():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        self.thaw()

    def remove(self) -> None:
        """Kill whatever is left inside, then remove the groups (bounded: about a second at most)."""
        deadline = time.monotonic() + 1.0
        for d in self.dirs:
            while True:
                self.kill_all()
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        break
                    time.sleep(0.01)


def create(memory_bytes: int, max_processes: int) -> KernelCgroups | None:
    """A fresh set of groups for one kernel, with the limits written; None where no cgroup can be written."""
    chosen = layout()
    if not chosen.hierarchies:
        return None
    name = f"{_owner_tag()}-{secrets.token_hex(4)}"
    made: list[Group] = []
    try:
        for h in chosen.hierarchies:
            path = h.parent / name
            path.mkdir()
            made.append(Group(h.version, path, h.controls))
            if "memory" in h.controls:
                _limit_memory(h.version, path, memory_bytes)
            if "pids" in h.controls:
                (path / "pids.max").write_text(str(max_processes))
    except OSError:
        for group in made:
            with contextlib.suppress(OSError):
                group.path.rmdir()
        return None
    return KernelCgroups(tuple(made))


def _limit_memory(version: int, path: Path, memory_bytes: int) -> None:
    if version == 2:
        (path / "memory.max").write_text(str(memory_bytes))
        with contextlib.suppress(OSError):  # no swap controller, or no swap: nothing to hold
            (path / "memory.swap.max").write_text("0")
        return
    (path / "memory.limit_in_bytes").write_text(str(memory_bytes))
    memsw = path / "memory.memsw.limit_in_bytes"
    if memsw.exists():
        with contextlib.suppress(OSError):
            memsw.write_text(str(memory_bytes))


def _counter(path: Path, key: str) -> int:
    """The value of `key` in a flat-keyed cgroup file ("key value" lines); 0 when absent or unreadable."""
    with contextlib.suppress(OSError, ValueError):
        for line in read_pseudo(path).splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    return 0


def _exited(pid: int) -> bool:
    """Gone, or a zombie waiting for its parent."""
    try:
        stat = read_pseudo(f"/proc/{pid}/stat")
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def _wait_exited(pids: Iterable[int], deadline: float) -> None:
    waiting = list(pids)
    while waiting and time.monotonic() < deadline:
        waiting = [p for p in waiting if not _exited(p)]
        if waiting:
            time.sleep(0.002)
