"""A session's working directory (the kernel's /mnt/data): placing uploads and finding what a run generated."""

from __future__ import annotations

import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path

from ci_mcp.paths import safe_name

_MAX_FILES = 10_000


@dataclass(frozen=True)
class Entry:
    size: int
    mtime_ns: int
    ino: int


Snapshot = dict[str, Entry]


def snapshot(root: Path) -> Snapshot:
    """Regular files under `root` (relative paths), without following symlinks. Bounded in count."""
    found: Snapshot = {}
    stack = [root]
    while stack and len(found) < _MAX_FILES:
        current = stack.pop()
        try:
            with os.scandir(current) as it:
                for entry in it:
                    if entry.name.startswith(".") and entry.is_dir(follow_symlinks=False):
                        continue  # caches like .ipynb_checkpoints, .config
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(Path(entry.path))
                    elif entry.is_file(follow_symlinks=False):
                        st = entry.stat(follow_symlinks=False)
                        found[os.path.relpath(entry.path, root)] = Entry(st.st_size, st.st_mtime_ns, st.st_ino)
        except OSError:
            continue
    return found


def changed(before: Snapshot, after: Snapshot) -> list[str]:
    """Relative paths that are new or modified, in a stable order."""
    return sorted(path for path, entry in after.items() if before.get(path) != entry)


def place(source: Path, workspace: Path, name: str) -> str:
    """Copy a stored file into the workspace under a safe name; returns the name used.

    The workspace is writable by untrusted code, so nothing there is followed: the copy goes to a fresh
    temporary opened with O_EXCL|O_NOFOLLOW and is renamed over whatever the name held (a rename replaces a
    symlink itself, never its target).
    """
    target_name = safe_name(name)
    tmp = workspace / f".ci-mcp-{secrets.token_hex(6)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    try:
        with os.fdopen(fd, "wb") as out, open(source, "rb") as src:
            shutil.copyfileobj(src, out, 1024 * 1024)
        os.replace(tmp, workspace / target_name)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target_name


def open_generated(workspace: Path, rel: str) -> int:
    """Open a file the code generated, for reading, refusing symlinks at the last component."""
    return os.open(workspace / rel, os.O_RDONLY | os.O_NOFOLLOW)


def size_of(root: Path) -> int:
    return sum(e.size for e in snapshot(root).values())
