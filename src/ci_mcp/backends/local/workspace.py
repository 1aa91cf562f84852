"""A session's working directory (the kernel's /mnt/data): placing uploads and finding what a run generated.

The directory is writable by untrusted code, which can swap any part of it for a symlink or a FIFO while the host
looks at it. So the host never resolves a path written there: it opens the (server-owned) root once and descends
with directory file descriptors and O_NOFOLLOW, and it opens or deletes a file only if it is still the regular file
(same device and inode) that the walk recorded.

Where the platform has no directory file descriptors (Windows: no O_DIRECTORY, no `dir_fd=`, no `os.scandir(fd)`),
the same rules are kept by paths (`DIR_FDS` false): every component is looked at with lstat and skipped if it is a
link or any other reparse point (a Windows junction), a directory is kept only if it is the same directory (device,
inode) before and after it was listed, and a file is opened or deleted only if it is still the recorded one. That is
weaker than the descriptor walk, which no swap can mislead: a kernel that wins several races in a row (a directory
swapped for a link and back while it is listed, then again between the host's look at a path and its open) could
make the host take a file from outside the workspace for a generated one. Where that walk is used (Windows) there is
no sandbox: the kernel runs as the server's user and could read that file itself.
"""

from __future__ import annotations

import os
import secrets
import shutil
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path

from ci_mcp.paths import workspace_name

_MAX_FILES = 10_000  # entries looked at per walk (files and directories)
_MAX_DEPTH = 64
_DEADLINE_S = 5.0
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)  # these flags are POSIX only: Windows lacks them (and directory fds)
_BINARY = getattr(os, "O_BINARY", 0)  # Windows only: without it a descriptor translates line ends
_DIR_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | _NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
_FILE_FLAGS = (
    os.O_RDONLY
    | _NOFOLLOW
    | _BINARY
    | getattr(os, "O_NONBLOCK", 0)
    | getattr(os, "O_NOCTTY", 0)
    | getattr(os, "O_CLOEXEC", 0)
)
_SEPARATORS = {"\\", ":"} if os.name == "nt" else set()  # another directory, a drive or a data stream there
_REPARSE_POINT = getattr(stat, "FILE_ATTRIBUTE_REPARSE_POINT", 0x400)

DIR_FDS = (
    hasattr(os, "O_DIRECTORY")
    and os.open in os.supports_dir_fd
    and os.stat in os.supports_dir_fd
    and os.unlink in os.supports_dir_fd
    and os.scandir in os.supports_fd
)
"""Walk by directory file descriptors (POSIX). False where the platform lacks them (Windows): the walk goes by
paths with the checks described above. Tests set it to False to run the path walk here."""


def pause_point(stage: str, rel: str) -> None:
    """Called between looking at `rel` and acting on it ("descend", "open", "remove"; "listed" after listing the
    directory `rel` and before looking at its entries): the moment a kernel racing the walk would swap something.
    Does nothing; tests replace it to make that race happen every time."""


@dataclass(frozen=True)
class Entry:
    size: int
    mtime_ns: int
    ino: int
    dev: int = 0
    allocated: int = field(default=0, compare=False)  # st_blocks * 512; settles after the write, so not compared

    @property
    def charge(self) -> int:
        """What the file costs on disk: its apparent or its allocated size, whichever is larger (sparse files,
        blocks preallocated past the end, many small files)."""
        return max(self.size, self.allocated)


@dataclass
class Snapshot:
    """Regular files found by one walk: `files` may be registered; `hidden` (under dot-directories) only count."""

    files: dict[str, Entry] = field(default_factory=dict)
    hidden: dict[str, Entry] = field(default_factory=dict)
    dir_bytes: int = 0  # allocated by the directories themselves
    stopped: str | None = None  # why the walk ended early, if it did

    @property
    def total_bytes(self) -> int:
        """Disk used under the root: every regular file once per inode (hard links are one file), by its charge,
        plus the directories."""
        inodes = {(e.dev, e.ino): e.charge for e in (*self.files.values(), *self.hidden.values())}
        return sum(inodes.values()) + self.dir_bytes

    def get(self, rel: str) -> Entry | None:
        return self.files.get(rel) or self.hidden.get(rel)


def _allocated(st: os.stat_result) -> int:
    return getattr(st, "st_blocks", 0) * 512  # Windows has no st_blocks: the apparent size is the charge there


def _is_link(st: os.stat_result) -> bool:
    """A symlink, or on Windows any reparse point (a junction, a mount point) that lstat reports as a directory."""
    return stat.S_ISLNK(st.st_mode) or bool(getattr(st, "st_file_attributes", 0) & _REPARSE_POINT)


def snapshot(root: Path, *, max_entries: int = _MAX_FILES, deadline_s: float = _DEADLINE_S) -> Snapshot:
    """Walk `root` without following a link (by directory file descriptors where the platform has them, else by
    paths: see the module's docstring). Bounded in entries and time."""
    snap = Snapshot()
    if not DIR_FDS:
        _PathWalk(snap, 0, max_entries, time.monotonic() + deadline_s).start(str(root))
        return snap
    try:
        root_fd = os.open(root, _DIR_FLAGS)
    except OSError:
        return snap
    try:
        root_st = os.fstat(root_fd)
        snap.dir_bytes = _allocated(root_st)
        state = _Walk(snap, root_st.st_dev, max_entries, time.monotonic() + deadline_s)
        state.walk(root_fd, "", False, 0)
    finally:
        os.close(root_fd)
    return snap


@dataclass
class _Walk:
    snap: Snapshot
    dev: int
    budget: int
    deadline: float

    def _over(self) -> bool:
        if self.snap.stopped is not None:
            return True
        if self.budget <= 0:
            self.snap.stopped = f"more than {_MAX_FILES:,} entries"
        elif time.monotonic() > self.deadline:
            self.snap.stopped = f"it took longer than {_DEADLINE_S:g} s"
        return self.snap.stopped is not None

    def _names(self, where: int | str) -> list[str] | None:
        """The names in a directory (an fd, or a path), within the budget; None if it cannot be listed."""
        names: list[str] = []
        try:
            with os.scandir(where) as it:
                for entry in it:
                    if self._over():
                        break
                    self.budget -= 1
                    names.append(entry.name)
        except OSError:
            return None
        return names

    def _record(self, rel: str, st: os.stat_result, hidden: bool) -> None:
        found = self.snap.hidden if hidden else self.snap.files
        found[rel] = Entry(st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev, _allocated(st))

    def walk(self, fd: int, prefix: str, hidden: bool, depth: int) -> None:
        names = self._names(fd)
        pause_point("listed", prefix)
        for name in names or ():
            if time.monotonic() > self.deadline:
                self._over()
                return
            try:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except OSError:
                continue
            rel = prefix + name
            if stat.S_ISDIR(st.st_mode):
                if depth >= _MAX_DEPTH:
                    continue
                pause_point("descend", rel)
                try:
                    child = os.open(name, _DIR_FLAGS, dir_fd=fd)
                except OSError:
                    continue
                try:
                    cst = os.fstat(child)
                    if stat.S_ISDIR(cst.st_mode) and cst.st_dev == self.dev:
                        self.snap.dir_bytes += _allocated(cst)
                        self.walk(child, rel + "/", hidden or name.startswith("."), depth + 1)
                finally:
                    os.close(child)
            elif stat.S_ISREG(st.st_mode):
                self._record(rel, st, hidden)


class _PathWalk(_Walk):
    """The walk by paths, for platforms without directory file descriptors."""

    def start(self, root: str) -> None:
        try:
            st = os.lstat(root)
        except OSError:
            return
        if stat.S_ISDIR(st.st_mode) and not _is_link(st):
            self.dev = st.st_dev
            self.snap.dir_bytes = _allocated(st)
            self.walk_path(root, st, "", False, 0)

    def walk_path(self, path: str, expected: os.stat_result, prefix: str, hidden: bool, depth: int) -> None:
        """List `path`, which lstat showed as the directory `expected`; keep what was found only if `path` is still
        that directory once every entry has been looked at."""
        if not _same_dir(path, expected):
            return
        looked: list[tuple[str, os.stat_result]] = []
        names = self._names(path)
        pause_point("listed", prefix)
        for name in names or ():
            if time.monotonic() > self.deadline:
                self._over()
                break
            try:
                looked.append((name, os.lstat(os.path.join(path, name))))
            except OSError:
                continue
        if not _same_dir(path, expected):
            return  # swapped while it was listed: what was seen may be another directory's
        for name, st in looked:
            rel = prefix + name
            if _is_link(st):
                continue
            if stat.S_ISDIR(st.st_mode):
                if depth >= _MAX_DEPTH or st.st_dev != self.dev:
                    continue
                pause_point("descend", rel)
                self.snap.dir_bytes += _allocated(st)
                self.walk_path(os.path.join(path, name), st, rel + "/", hidden or name.startswith("."), depth + 1)
            elif stat.S_ISREG(st.st_mode):
                self._record(rel, st, hidden)


def _same_dir(path: str, expected: os.stat_result) -> bool:
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return (
        stat.S_ISDIR(st.st_mode) and not _is_link(st) and (st.st_dev, st.st_ino) == (expected.st_dev, expected.st_ino)
    )


def changed(before: Snapshot, after: Snapshot, *, include_hidden: bool = False) -> list[str]:
    """Relative paths that are new or modified, in a stable order (registrable ones unless `include_hidden`)."""
    out = [p for p, e in after.files.items() if before.files.get(p) != e]
    if include_hidden:
        out += [p for p, e in after.hidden.items() if before.hidden.get(p) != e]
    return sorted(out)


def _parts(rel: str) -> list[str]:
    parts = rel.split("/")
    if any(p in ("", ".", "..") or _SEPARATORS & set(p) for p in parts):
        raise OSError(f"refusing path {rel!r}")
    return parts


def _parent_fd(workspace: Path, rel: str) -> tuple[int, str]:
    """An fd of the directory holding `rel` (reached without following links) and the last component."""
    parts = _parts(rel)
    fd = os.open(workspace, _DIR_FLAGS)
    try:
        for part in parts[:-1]:
            nxt = os.open(part, _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = nxt
    except BaseException:
        os.close(fd)
        raise
    return fd, parts[-1]


def _plain_path(workspace: Path, rel: str) -> str:
    """The path walk's `_parent_fd`: the path of `rel`, after checking with lstat that the workspace and every
    directory on the way is a directory and not a link (raises OSError otherwise)."""
    parts = _parts(rel)
    current = str(workspace)
    for part in ["", *parts[:-1]]:
        current = os.path.join(current, part) if part else current
        st = os.lstat(current)
        if _is_link(st) or not stat.S_ISDIR(st.st_mode):
            raise OSError(f"{rel!r}: {current!r} is no longer a plain directory")
    return os.path.join(current, parts[-1])


def _same(st: os.stat_result, expected: Entry) -> bool:
    return stat.S_ISREG(st.st_mode) and (st.st_dev, st.st_ino) == (expected.dev, expected.ino)


def open_generated(workspace: Path, rel: str, expected: Entry) -> int:
    """Open a file the code generated, for reading, only if it is still the regular file the walk recorded.

    Raises OSError (and opens nothing) for a symlink anywhere on the path, a FIFO or device, or another inode.
    """
    pause_point("open", rel)
    if DIR_FDS:
        parent, name = _parent_fd(workspace, rel)
        try:
            fd = os.open(name, _FILE_FLAGS, dir_fd=parent)
        finally:
            os.close(parent)
    else:
        path = _plain_path(workspace, rel)
        if not _same(os.lstat(path), expected):  # a link (O_NOFOLLOW is POSIX only) or another file: not opened
            raise OSError(f"{rel!r} changed since the run ended")
        fd = os.open(path, _FILE_FLAGS)
    try:
        if not _same(os.fstat(fd), expected):
            raise OSError(f"{rel!r} changed since the run ended")
    except BaseException:
        os.close(fd)
        raise
    return fd


def remove(workspace: Path, rel: str, expected: Entry) -> bool:
    """Delete `rel` if it is still the recorded regular file; never follows a link. True if removed."""
    pause_point("remove", rel)
    if not DIR_FDS:
        try:
            path = _plain_path(workspace, rel)
            if not _same(os.lstat(path), expected):
                return False
            os.unlink(path)  # removes a link itself, never its target
        except OSError:
            return False
        return True
    try:
        parent, name = _parent_fd(workspace, rel)
    except OSError:
        return False
    try:
        if not _same(os.stat(name, dir_fd=parent, follow_symlinks=False), expected):
            return False
        os.unlink(name, dir_fd=parent)
        return True
    except OSError:
        return False
    finally:
        os.close(parent)


def place(source: Path, workspace: Path, name: str) -> str:
    """Copy a stored file into the workspace under its name (paths.workspace_name); returns the name used.

    The workspace is writable by untrusted code, so nothing there is followed: the copy goes to a fresh
    temporary opened with O_EXCL|O_NOFOLLOW and is renamed over whatever the name held (a rename replaces a
    symlink itself, never its target).
    """
    target_name = workspace_name(name)
    tmp = workspace / f".ci-mcp-{secrets.token_hex(6)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _BINARY, 0o644)
    try:
        with os.fdopen(fd, "wb") as out, open(source, "rb") as src:
            shutil.copyfileobj(src, out, 1024 * 1024)
        os.replace(tmp, workspace / target_name)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target_name


def size_of(root: Path) -> int:
    """Disk used under `root` (every file, dot-directories included, by apparent or allocated size)."""
    return snapshot(root).total_bytes
