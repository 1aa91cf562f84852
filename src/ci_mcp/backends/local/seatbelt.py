"""The macOS kernel sandbox: a Seatbelt profile for `sandbox-exec`, with the same file rules as bubblewrap.

Everything is denied unless allowed below. The kernel may read the system's libraries and tools (/usr, /bin,
/System, the dyld and time-zone databases, a few /etc files), its Python installation (every path the interpreter
imports from, as `interpreter.probe` learns them) and ci-mcp's launcher, and run programs from those; it may read
and write only the session's working directory and its private connection directory (which is also its TMPDIR
and HOME). Of other paths it sees only the metadata of the directories on the way to these, and of the system's
settings only sysctl values. No network: the only sockets it may bind, accept on or connect to are Unix sockets
inside those directories (the kernel's socket to the server is in the connection directory).

No path is ever written into the profile text: each is handed to `sandbox-exec` as a `-D NAME=path` parameter and
the profile refers to it as `(param "NAME")`, so a path with `"`, `)` or `;` in it is data, never profile syntax.
Seatbelt compares resolved paths (/tmp is /private/tmp on macOS), so every path is given resolved as well as as
written.

Written and checked on Linux only (tests/local/test_seatbelt.py checks the generated text): NOT yet run on a Mac.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import PurePosixPath

SANDBOX_EXEC = "/usr/bin/sandbox-exec"
"""The system's own sandbox-exec, by absolute path (never looked up on PATH)."""

SYSTEM_READ = (
    "/usr",
    "/bin",
    "/sbin",
    "/System",
    "/Library/Apple",
    "/private/var/db/dyld",
    "/private/var/db/timezone",
    "/private/etc/localtime",
    "/private/etc/passwd",
    "/private/etc/group",
    "/private/etc/hosts",
    "/private/etc/services",
    "/private/var/select",  # which shell /bin/sh runs
    "/dev/null",
    "/dev/zero",
    "/dev/random",
    "/dev/urandom",
)
"""What every process needs to start and run on macOS (libraries, tools, time zones, user names, entropy)."""

SYSTEM_LINKS = ("/etc", "/tmp", "/var")
"""macOS's links into /private: readable as links (their metadata), so paths through them resolve."""

_BASE = """(version 1)
(deny default)
(allow process-fork)
(allow signal (target same-sandbox))
(allow process-info* (target same-sandbox))
(allow sysctl-read)
(allow ipc-posix-sem)
(allow ipc-posix-shm)
(allow mach-lookup (global-name "com.apple.system.opendirectoryd.libinfo"))
(allow file-write-data (literal "/dev/null"))
(allow file-write-data (literal "/dev/zero"))
(allow system-socket (socket-domain AF_UNIX))
(deny network-outbound (remote ip))
(deny network-inbound (local ip))
(deny network-bind (local ip))
"""


@dataclass(frozen=True)
class Profile:
    text: str
    """The profile, with no path in it (paths are parameters)."""
    params: tuple[tuple[str, str], ...]
    """(name, path) pairs for `-D name=path`."""

    def argv(self) -> list[str]:
        """The command prefix: sandbox-exec with this profile; the kernel's command follows."""
        args = [SANDBOX_EXEC, "-p", self.text]
        for name, value in self.params:
            args += ["-D", f"{name}={value}"]
        return args


def profile(*, read: Iterable[str], write: Iterable[str], private: str, private_parent: str) -> Profile:
    """The kernel's profile: read-only `read` paths (besides SYSTEM_READ), read-write `write` paths and the
    kernel's `private` directory, no network. `private` is passed as written: it may be a placeholder the caller
    replaces in the arguments once the directory exists, inside `private_parent` (absolute and resolved)."""
    params: list[tuple[str, str]] = []
    rules: list[str] = []

    counts: dict[str, int] = {}

    def param(prefix: str, path: str) -> str:
        counts[prefix] = counts.get(prefix, -1) + 1
        name = f"{prefix}_{counts[prefix]}"
        params.append((name, path))
        return f'(param "{name}")'

    reads = _spellings([*SYSTEM_READ, *read])
    writes = _spellings(write)
    parents = _ancestors([*reads, *writes, private_parent + "/k"])  # the private directory's parent included
    for path in [*parents, *(link for link in SYSTEM_LINKS if link not in parents)]:
        # realpath and the import system look at each parent directory (its metadata only, never its listing)
        rules.append(f"(allow file-read-metadata (literal {param('PARENT', path)}))")
    for path in reads:
        where = param("READ", path)
        rules.append(f"(allow file-read* process-exec (subpath {where}))")
    for path in [*writes, private]:
        where = param("WRITE", path)
        rules.append(f"(allow file-read* file-write* process-exec (subpath {where}))")
        rules.append(f"(allow network-bind network-inbound (local unix-socket (subpath {where})))")
        rules.append(f"(allow network-outbound (remote unix-socket (subpath {where})))")
    return Profile(_BASE + "\n".join(rules) + "\n", tuple(params))


def _spellings(paths: Iterable[str]) -> list[str]:
    """Each absolute path as written and resolved (in order, without repeats)."""
    out: list[str] = []
    for path in paths:
        if not path.startswith("/"):
            raise ValueError(f"sandbox paths must be absolute: {path!r}")
        for form in (path, os.path.realpath(path)):
            if form not in out:
                out.append(form)
    return out


def _ancestors(paths: Iterable[str]) -> list[str]:
    found: list[str] = []
    for path in paths:
        for parent in PurePosixPath(path).parents:
            if str(parent) not in found:
                found.append(str(parent))
    return found
