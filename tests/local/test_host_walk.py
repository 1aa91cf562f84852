"""The host's walk over a session directory never resolves a path the kernel wrote: a directory swapped for a
symlink, or a file swapped for a FIFO, after the walk is neither read, nor blocked on, nor deleted through."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest

from ci_mcp.backends.local import cgroups, sandbox, workspace
from ci_mcp.backends.local.backend import LocalBackend
from ci_mcp.backends.local.outputs import OutputCollector
from ci_mcp.settings import Settings
from ci_mcp.store import FileStore
from tests.conftest import all_text, generated_ids, open_client, session_of

pytestmark = pytest.mark.usefixtures("each_walk")  # every test with the descriptor walk and with the path walk

SECRET = b"host secret, not for the kernel"


def _setup(tmp_path: Path) -> tuple[Path, Path]:
    ws = tmp_path / "ws"
    (ws / "sub").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "out.txt").write_bytes(SECRET)
    return ws, outside


def _collect(tmp_path: Path, ws: Path, before: workspace.Snapshot, **kw: object) -> OutputCollector:
    settings = Settings(data_dir=tmp_path / "data", allowed_dirs=[], **kw)  # type: ignore[arg-type]
    store = FileStore(settings.data_dir)
    backend = LocalBackend(settings, store)
    collector = OutputCollector(store, "s1", 10_000, tmp_path)
    live = SimpleNamespace(workspace=ws, session_id="s1")
    done = threading.Event()

    def go() -> None:
        backend._collect_files(live, before, collector)  # type: ignore[arg-type]
        done.set()

    threading.Thread(target=go, daemon=True).start()
    if not done.wait(10):
        # release a reader blocked on a FIFO before failing
        for p in ws.rglob("*"):
            if p.is_fifo():
                os.close(os.open(p, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail("the host blocked on a file the kernel wrote")
    contents = [store.read(i.file_id) for i in collector.generated]
    assert SECRET not in contents
    store.close()
    return collector


def test_a_directory_swapped_for_a_symlink_is_not_read_through(tmp_path: Path) -> None:
    ws, outside = _setup(tmp_path)
    (ws / "sub" / "out.txt").write_bytes(b"mine")
    after = workspace.snapshot(ws)
    (ws / "sub" / "out.txt").unlink()
    (ws / "sub").rmdir()
    (ws / "sub").symlink_to(outside)
    with pytest.raises(OSError):
        workspace.open_generated(ws, "sub/out.txt", after.files["sub/out.txt"])
    assert not workspace.remove(ws, "sub/out.txt", after.files["sub/out.txt"])
    assert (outside / "out.txt").read_bytes() == SECRET


def test_registration_after_a_swap_adds_nothing_and_deletes_nothing_outside(tmp_path: Path) -> None:
    ws, outside = _setup(tmp_path)
    before = workspace.snapshot(ws)
    (ws / "sub" / "out.txt").write_bytes(b"x" * (2 * 1024 * 1024))

    real_snapshot = workspace.snapshot

    def snapshot_then_swap(root: Path, **kw: object) -> workspace.Snapshot:
        snap = real_snapshot(root)
        (ws / "sub" / "out.txt").unlink()
        (ws / "sub").rmdir()
        (ws / "sub").symlink_to(outside)
        return snap

    workspace.snapshot = snapshot_then_swap
    try:
        collector = _collect(tmp_path, ws, before, max_session_dir_mb=1)
    finally:
        workspace.snapshot = real_snapshot
    assert collector.generated == []
    assert (outside / "out.txt").read_bytes() == SECRET


def test_a_file_swapped_for_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    ws, _ = _setup(tmp_path)
    before = workspace.snapshot(ws)
    (ws / "pipe.txt").write_bytes(b"data")
    after = workspace.snapshot(ws)
    (ws / "pipe.txt").unlink()
    os.mkfifo(ws / "pipe.txt")
    with pytest.raises(OSError):
        workspace.open_generated(ws, "pipe.txt", after.files["pipe.txt"])

    real_snapshot = workspace.snapshot
    workspace.snapshot = lambda root, **kw: after
    try:
        collector = _collect(tmp_path, ws, before)
    finally:
        workspace.snapshot = real_snapshot
    assert collector.generated == []


def test_dot_directories_count_for_the_size_cap_but_are_not_registered(tmp_path: Path) -> None:
    ws, _ = _setup(tmp_path)
    (ws / ".cache").mkdir()
    (ws / ".cache" / "big").write_bytes(b"0" * 1000)
    (ws / "a.txt").write_bytes(b"0" * 10)
    snap = workspace.snapshot(ws)
    assert set(snap.files) == {"a.txt"}
    assert set(snap.hidden) == {".cache/big"}
    assert snap.total_bytes == workspace.size_of(ws)
    on_disk = sum(max(e.size, e.allocated) for e in (*snap.files.values(), *snap.hidden.values()))
    assert snap.total_bytes >= on_disk >= 1010
    (ws / ".cache" / "big").unlink()
    assert workspace.size_of(ws) < snap.total_bytes


def test_the_walk_is_bounded_in_entries(tmp_path: Path) -> None:
    ws, _ = _setup(tmp_path)
    for i in range(20):
        (ws / f"f{i}").write_bytes(b"")
    snap = workspace.snapshot(ws, max_entries=5)
    assert snap.stopped and len(snap.files) <= 5


RESPONDER = """
import os, threading, time
def respond():
    k = 0
    while True:
        k += 1
        while not os.path.exists(f'.race/go-{{k}}'):
            time.sleep(0.001)
        how = open(f'.race/go-{{k}}').read()
        if how == 'link':
            os.rename('sub', '.race/sub.real')
            os.symlink({target!r}, 'sub')
        elif how == 'fifo':
            os.unlink('sub/out.txt')
            os.mkfifo('sub/out.txt')
        open(f'.race/done-{{k}}', 'w').close()
os.makedirs('.race', exist_ok=True)
os.makedirs('sub', exist_ok=True)
threading.Thread(target=respond, daemon=True).start()
open('sub/out.txt', 'wb').write(b'm' * {size})
print('ready')
"""


class Race:
    """At the walk's pause point `stage` for a path in sub/, ask the kernel to swap (`how`) and wait until it has:
    the swap lands exactly between the host looking and acting, every time."""

    def __init__(self, stage: str, how: str) -> None:
        self.stage, self.how = stage, how
        self.armed = False
        self.swapped: list[str] = []

    def __call__(self, stage: str, rel: str) -> None:
        if not (self.armed and stage == self.stage and rel.startswith("sub")):
            return
        self.armed = False
        ws = next(p.parent for p in Path(self.data_dir, "workspaces").glob("*/.race"))
        k = len(self.swapped) + 1
        (ws / ".race" / "go.tmp").write_text(self.how)
        (ws / ".race" / "go.tmp").rename(ws / ".race" / f"go-{k}")
        deadline = time.monotonic() + 20
        while not (ws / ".race" / f"done-{k}").exists() and time.monotonic() < deadline:
            time.sleep(0.001)
        if (ws / ".race" / f"done-{k}").exists():
            self.swapped.append(rel)

    data_dir = ""


@pytest.mark.anyio
@pytest.mark.skipif(not sandbox.bwrap_works()[0], reason="bubblewrap unavailable")
@pytest.mark.parametrize(
    ("stage", "how", "size"),
    [("descend", "link", 10), ("open", "link", 10), ("open", "fifo", 10), ("remove", "link", 2 * 1024 * 1024)],
)
async def test_a_kernel_swapping_while_the_host_walks_gets_nothing(
    make_settings: Callable[..., Settings],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    stage: str,
    how: str,
    size: int,
) -> None:
    _, outside = _setup(tmp_path)
    full = cgroups.layout()  # without a freezer, so the kernel can run while the host walks
    thawed = cgroups.Layout(tuple(h for h in full.hierarchies if "freeze" not in h.controls))
    monkeypatch.setattr(cgroups, "layout", lambda: thawed)
    race = Race(stage, how)
    monkeypatch.setattr(workspace, "pause_point", race)
    settings = make_settings(sandbox="bwrap", max_session_dir_mb=1)
    race.data_dir = str(settings.data_dir)
    client, store = await open_client(settings)
    async with client:
        race.armed = True
        code = RESPONDER.format(target=str(outside), size=size)
        result = await client.call_tool("run_code_analysis", {"code": code})
        assert "ready" in all_text(result), all_text(result)
        assert race.swapped, f"the kernel did not swap at {stage}"  # the race was hit, not hoped for
        for fid in generated_ids(result).values():
            assert SECRET not in store.read(fid)
        assert (outside / "out.txt").read_bytes() == SECRET
        assert sorted(p.name for p in outside.iterdir()) == ["out.txt"]
        after = await client.call_tool("run_code_analysis", {"code": "print(6 * 7)", "session_id": session_of(result)})
        assert "42" in all_text(after), all_text(after)
    store.close()


@pytest.mark.anyio
@pytest.mark.skipif(not sandbox.bwrap_works()[0], reason="bubblewrap unavailable")
async def test_the_walk_before_a_run_is_off_the_event_loop(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    loop_thread = threading.get_ident()
    seen: list[int] = []
    monkeypatch.setattr(workspace, "pause_point", lambda stage, rel: seen.append(threading.get_ident()))
    client, store = await open_client(make_settings(sandbox="bwrap"))
    async with client:
        first = await client.call_tool("run_code_analysis", {"code": "import os; os.makedirs('sub')"})
        seen.clear()
        await client.call_tool("run_code_analysis", {"code": "print(1)", "session_id": session_of(first)})
    store.close()
    assert seen and loop_thread not in seen
