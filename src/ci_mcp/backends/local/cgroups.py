"""Per-kernel cgroup limits (memory for all of a session's processes, and a process count), where the host lets us.

cgroup v1 `memory` and `pids` hierarchies writable by this user are used; otherwise nothing is done and the
resource limits of kernel_launcher (address space, processes, file size, CPU time) remain the only limits.
The kernel command is prefixed with a tiny shell that joins the cgroups before it execs the sandbox, so every
process of the session is inside them from its first instruction.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path

_V1 = Path("/sys/fs/cgroup")
_PARENT = "ci-mcp"


@cache
def available() -> bool:
    for controller in ("memory", "pids"):
        parent = _V1 / controller / _PARENT
        try:
            parent.mkdir(exist_ok=True)
            probe = parent / f"probe-{os.getpid()}"
            probe.mkdir()
            probe.rmdir()
        except OSError:
            return False
    return True


@dataclass(frozen=True)
class KernelCgroups:
    dirs: tuple[Path, ...]

    def wrapper(self) -> tuple[str, ...]:
        procs = [str(d / "cgroup.procs") for d in self.dirs]
        script = " && ".join(f'echo $$ > "${i + 1}"' for i in range(len(procs)))
        return ("/bin/sh", "-c", f'{script} && shift {len(procs)} && exec "$@"', "ci-mcp-cgroup", *procs)

    def oom_killed(self) -> bool:
        for d in self.dirs:
            control = d / "memory.oom_control"
            with contextlib.suppress(OSError):
                for line in control.read_text().splitlines():
                    if line.startswith("oom_kill ") and int(line.split()[1]) > 0:
                        return True
            failcnt = d / "memory.failcnt"
            with contextlib.suppress(OSError, ValueError):
                if int(failcnt.read_text()) > 0 and (d / "memory.oom_control").exists():
                    return True
        return False

    def task_count(self) -> int | None:
        """Tasks (threads of every process) in the session's pids cgroup."""
        for d in self.dirs:
            if (d / "pids.current").exists():
                with contextlib.suppress(OSError, ValueError):
                    return int((d / "pids.current").read_text())
        return None

    def remove(self) -> None:
        """Kill whatever is left inside, then remove the groups (bounded: about a second at most)."""
        deadline = time.monotonic() + 1.0
        for d in self.dirs:
            while True:
                with contextlib.suppress(OSError, ValueError):
                    for pid in (d / "cgroup.procs").read_text().split():
                        with contextlib.suppress(ProcessLookupError, PermissionError):
                            os.kill(int(pid), signal.SIGKILL)
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
    if not available():
        return None
    name = secrets.token_hex(6)
    made: list[Path] = []
    try:
        mem = _V1 / "memory" / _PARENT / name
        mem.mkdir()
        made.append(mem)
        (mem / "memory.limit_in_bytes").write_text(str(memory_bytes))
        memsw = mem / "memory.memsw.limit_in_bytes"
        if memsw.exists():
            with contextlib.suppress(OSError):
                memsw.write_text(str(memory_bytes))
        pids = _V1 / "pids" / _PARENT / name
        pids.mkdir()
        made.append(pids)
        (pids / "pids.max").write_text(str(max_processes))
    except OSError:
        for d in made:
            with contextlib.suppress(OSError):
                d.rmdir()
        return None
    return KernelCgroups(tuple(made))
