"""Retention: remove old files and the workspaces of finished sessions, so the data directory does not grow forever.

Used by `ci-mcp files prune` and, when `CI_MCP_FILE_RETENTION_DAYS` is set, at server start. A file is old when it
was made before the cutoff and its session (if any) has not been used since; a workspace goes when its session is
closed and was last used before the cutoff, or when no session refers to it and it was last changed before then.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from ci_mcp.backends.local.state import LocalSessionState
from ci_mcp.errors import ConfigError
from ci_mcp.models import FileInfo
from ci_mcp.sessions import NoState, SessionStore
from ci_mcp.settings import Settings
from ci_mcp.store import FileStore

log = logging.getLogger(__name__)

DAY = 86400.0


@dataclass(frozen=True)
class PrunePlan:
    cutoff: float
    files: tuple[FileInfo, ...]
    workspaces: tuple[Path, ...]
    workspace_bytes: int = field(default=0)

    @property
    def file_bytes(self) -> int:
        return sum(f.size for f in self.files)


def plan_prune(store: FileStore, older_than_days: float, *, now: float | None = None) -> PrunePlan:
    """What a prune would remove; removes nothing."""
    cutoff = (time.time() if now is None else now) - older_than_days * DAY
    records = SessionStore(store.data_dir)
    try:
        sessions = {s.session_id: s for s in records.list(NoState)}
        local = records.list(LocalSessionState, "local")
    finally:
        records.close()
    files = tuple(
        f
        for f in store.list()
        if f.created_at < cutoff
        and (f.session_id is None or f.session_id not in sessions or sessions[f.session_id].last_used_at < cutoff)
    )
    root = store.workspaces_dir.resolve()
    referenced: set[Path] = set()
    doomed: list[Path] = []
    for rec in local:
        if not rec.state.workspace:
            continue
        ws = Path(rec.state.workspace)
        if ws.parent.resolve() != root:  # the state names a directory outside the store: never delete it
            continue
        referenced.add(ws.resolve())
        if rec.closed and rec.last_used_at < cutoff and ws.is_dir():
            doomed.append(ws)
    # a workspace no session names: left by a server that stopped without cleaning up, or a running server's
    # pre-started kernel, so it must also be a day old
    orphan_cutoff = min(cutoff, (time.time() if now is None else now) - DAY)
    for ws in root.iterdir():
        if ws.resolve() not in referenced and ws.is_dir() and not ws.is_symlink() and _mtime(ws) < orphan_cutoff:
            doomed.append(ws)
    return PrunePlan(cutoff, files, tuple(sorted(doomed)), sum(_size(ws) for ws in doomed))


def prune(store: FileStore, plan: PrunePlan) -> None:
    for info in plan.files:
        store.delete(info.file_id)
    for ws in plan.workspaces:
        shutil.rmtree(ws, ignore_errors=True)  # never follows symlinks the kernel left in it


def _mtime(path: Path) -> float:
    try:
        return path.lstat().st_mtime
    except OSError:
        return 0.0


def _size(root: Path) -> int:
    total = 0
    for dirpath, _, names in os.walk(root, followlinks=False):
        for name in names:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                continue
    return total


def describe(plan: PrunePlan, *, done: bool) -> str:
    verb = "removed" if done else "would remove"
    return (
        f"{verb} {len(plan.files)} file(s) ({_mb(plan.file_bytes)}) and {len(plan.workspaces)} session "
        f"workspace(s) ({_mb(plan.workspace_bytes)}) older than {_when(plan.cutoff)}"
    )


def files_prune(settings: Settings, older_than_days: float | None, *, dry_run: bool) -> int:
    """`ci-mcp files prune`: prints what it removes (or would), one line per item and a summary."""
    days = settings.file_retention_days if older_than_days is None else older_than_days
    if days is None:
        raise ConfigError("files prune needs --older-than DAYS, or CI_MCP_FILE_RETENTION_DAYS set.")
    if days < 0:
        raise ConfigError("--older-than must be 0 or more days.")
    store = FileStore(settings.data_dir)
    try:
        plan = plan_prune(store, days)
        for info in plan.files:
            print(f"{info.file_id}  {info.name}  {info.size} bytes  made {_when(info.created_at)}")
        for ws in plan.workspaces:
            print(f"workspace {ws}")
        if not dry_run:
            prune(store, plan)
        print(f"ci-mcp: {describe(plan, done=not dry_run)} in {settings.data_dir}")
    finally:
        store.close()
    return 0


def prune_on_start(store: FileStore, settings: Settings) -> None:
    """Apply CI_MCP_FILE_RETENTION_DAYS when a server starts (before any kernel or session exists)."""
    if settings.file_retention_days is None:
        return
    plan = plan_prune(store, settings.file_retention_days)
    if plan.files or plan.workspaces:
        prune(store, plan)
        log.info(
            "retention (CI_MCP_FILE_RETENTION_DAYS=%g): %s", settings.file_retention_days, describe(plan, done=True)
        )


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(t))


def _mb(n: int) -> str:
    return f"{n / 1_000_000:.1f} MB"
