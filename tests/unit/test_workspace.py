"""src/ci_mcp/backends/local/workspace.py: the walk's sizes, and opening or removing only the file it recorded.

The races themselves (a kernel swapping paths during the walk) are in tests/local/test_host_walk.py; here each
function is checked directly on a directory the test arranges."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ci_mcp.backends.local import workspace

pytestmark = pytest.mark.usefixtures("each_walk")  # every test with the descriptor walk and with the path walk


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    root = tmp_path / "ws"
    root.mkdir()
    return root


def test_the_snapshot_lists_regular_files_by_relative_path_and_dot_directories_apart(ws: Path) -> None:
    (ws / "a.csv").write_bytes(b"x" * 10)
    (ws / "sub" / "deep").mkdir(parents=True)
    (ws / "sub" / "deep" / "b.txt").write_bytes(b"y" * 20)
    (ws / ".cache").mkdir()
    (ws / ".cache" / "c.bin").write_bytes(b"z" * 30)
    (ws / ".dotfile").write_bytes(b"d")
    os.mkfifo(ws / "pipe")
    snap = workspace.snapshot(ws)
    assert {p: e.size for p, e in snap.files.items()} == {"a.csv": 10, "sub/deep/b.txt": 20, ".dotfile": 1}
    assert {p: e.size for p, e in snap.hidden.items()} == {".cache/c.bin": 30}
    assert snap.get(".cache/c.bin") is not None and snap.get("pipe") is None
    assert snap.stopped is None and snap.dir_bytes > 0


def test_links_are_never_followed(ws: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "big.bin").write_bytes(b"b" * 100_000)
    (ws / "to-file").symlink_to(outside / "big.bin")
    (ws / "to-dir").symlink_to(outside)
    snap = workspace.snapshot(ws)
    assert snap.files == {} and snap.hidden == {}
    assert snap.total_bytes == snap.dir_bytes


def _swap_for_link_at(stage: str, ws: Path, outside: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """At the walk's pause point `stage` for sub/, swap sub for a link to `outside` (once); returns where it did."""
    swapped: list[str] = []

    def swap(at: str, rel: str) -> None:
        if at == stage and rel.rstrip("/") == "sub" and not swapped:
            os.replace(ws / "sub", ws.parent / "sub.real")
            (ws / "sub").symlink_to(outside)
            swapped.append(rel)

    monkeypatch.setattr(workspace, "pause_point", swap)
    return swapped


@pytest.mark.parametrize("stage", ["descend", "listed"])
def test_a_directory_swapped_for_a_link_while_walked_adds_nothing_from_outside(
    ws: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stage: str
) -> None:
    """ "descend": between seeing sub/ as a directory and going in; "listed": after listing sub/, before looking at
    what it holds (the path walk looks at each entry by its path, which now goes through the link)."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "out.txt").write_bytes(b"o" * 100_000)
    (ws / "sub").mkdir()
    (ws / "sub" / "out.txt").write_bytes(b"mine")
    swapped = _swap_for_link_at(stage, ws, outside, monkeypatch)
    snap = workspace.snapshot(ws)
    assert swapped, "the swap did not happen"
    outside_inode = (outside / "out.txt").stat().st_ino
    assert all(e.ino != outside_inode for e in (*snap.files.values(), *snap.hidden.values())), snap
    assert snap.total_bytes < 100_000


def test_total_bytes_counts_each_inode_once_by_its_larger_size(ws: Path) -> None:
    (ws / "a.bin").write_bytes(b"a" * 50_000)
    os.link(ws / "a.bin", ws / "hard-link.bin")
    with open(ws / "sparse.bin", "wb") as fh:
        fh.truncate(10_000_000)  # apparent size only
    snap = workspace.snapshot(ws)
    files = snap.files
    assert files["a.bin"].ino == files["hard-link.bin"].ino
    sparse = files["sparse.bin"]
    assert sparse.size == 10_000_000 and sparse.allocated < sparse.size and sparse.charge == sparse.size
    a = files["a.bin"]
    assert a.charge == max(a.size, a.allocated) >= 50_000
    assert snap.total_bytes == a.charge + sparse.charge + snap.dir_bytes
    assert workspace.size_of(ws) == snap.total_bytes


def test_the_walk_stops_at_its_entry_budget_and_says_so(ws: Path) -> None:
    for i in range(10):
        (ws / f"f{i}").write_bytes(b"x")
    snap = workspace.snapshot(ws, max_entries=4)
    assert len(snap.files) == 4 and snap.stopped is not None and "entries" in snap.stopped


def test_a_missing_root_is_an_empty_snapshot(tmp_path: Path) -> None:
    snap = workspace.snapshot(tmp_path / "gone")
    assert snap.files == {} and snap.total_bytes == 0


def test_changed_lists_new_and_modified_files_in_order(ws: Path) -> None:
    (ws / "same.txt").write_bytes(b"s")
    (ws / "edit.txt").write_bytes(b"e")
    before = workspace.snapshot(ws)
    (ws / "edit.txt").write_bytes(b"edited")
    (ws / "b-new.txt").write_bytes(b"n")
    (ws / ".hidden").mkdir()
    (ws / ".hidden" / "h").write_bytes(b"h")
    after = workspace.snapshot(ws)
    assert workspace.changed(before, after) == ["b-new.txt", "edit.txt"]
    assert workspace.changed(before, after, include_hidden=True) == [".hidden/h", "b-new.txt", "edit.txt"]


# -- open_generated / remove ---------------------------------------------------------------------------------------


def recorded(ws: Path, rel: str, data: bytes = b"data") -> workspace.Entry:
    (ws / rel).parent.mkdir(parents=True, exist_ok=True)
    (ws / rel).write_bytes(data)
    entry = workspace.snapshot(ws).get(rel)
    assert entry is not None
    return entry


def test_the_recorded_file_is_opened_and_removed(ws: Path) -> None:
    entry = recorded(ws, "sub/out.txt")
    fd = workspace.open_generated(ws, "sub/out.txt", entry)
    with os.fdopen(fd, "rb") as fh:
        assert fh.read() == b"data"
    assert workspace.remove(ws, "sub/out.txt", entry) is True
    assert not (ws / "sub" / "out.txt").exists()


def test_a_file_swapped_for_a_symlink_is_neither_opened_nor_removed(ws: Path, tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"host file")
    entry = recorded(ws, "out.txt")
    (ws / "out.txt").unlink()
    (ws / "out.txt").symlink_to(victim)
    with pytest.raises(OSError):
        workspace.open_generated(ws, "out.txt", entry)
    assert workspace.remove(ws, "out.txt", entry) is False
    assert victim.read_bytes() == b"host file" and (ws / "out.txt").is_symlink()


def test_a_directory_swapped_for_a_symlink_is_not_descended(ws: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    entry = recorded(ws, "sub/out.txt")
    (outside / "out.txt").write_bytes(b"host file")
    os.replace(ws / "sub", tmp_path / "moved")
    (ws / "sub").symlink_to(outside)
    with pytest.raises(OSError):
        workspace.open_generated(ws, "sub/out.txt", entry)
    assert workspace.remove(ws, "sub/out.txt", entry) is False
    assert (outside / "out.txt").exists()


def test_a_file_swapped_for_another_or_a_fifo_is_refused(ws: Path) -> None:
    entry = recorded(ws, "out.txt")
    (ws / "other").write_bytes(b"data")  # same bytes, another inode (made while the first still exists)
    os.replace(ws / "other", ws / "out.txt")
    with pytest.raises(OSError, match="changed since the run ended"):
        workspace.open_generated(ws, "out.txt", entry)
    assert workspace.remove(ws, "out.txt", entry) is False
    fifo_entry = recorded(ws, "f.txt")
    (ws / "f.txt").unlink()
    os.mkfifo(ws / "f.txt")
    with pytest.raises(OSError):  # opened non-blocking, so it cannot hang the host either
        workspace.open_generated(ws, "f.txt", fifo_entry)
    assert workspace.remove(ws, "f.txt", fifo_entry) is False and (ws / "f.txt").exists()


@pytest.mark.parametrize("rel", ["../escape.txt", "a//b", "./x", ""])
def test_paths_that_are_not_plain_relative_are_refused(ws: Path, rel: str) -> None:
    entry = workspace.Entry(1, 0, 0)
    with pytest.raises(OSError, match="refusing path"):
        workspace.open_generated(ws, rel, entry)
    assert workspace.remove(ws, rel, entry) is False


def test_place_replaces_a_symlink_and_never_writes_through_it(ws: Path, tmp_path: Path) -> None:
    victim = tmp_path / "victim.csv"
    victim.write_bytes(b"host file")
    source = tmp_path / "upload.csv"
    source.write_bytes(b"uploaded")
    (ws / "data.csv").symlink_to(victim)
    assert workspace.place(source, ws, "dir/data.csv") == "data.csv"
    assert (ws / "data.csv").read_bytes() == b"uploaded" and not (ws / "data.csv").is_symlink()
    assert victim.read_bytes() == b"host file"
    assert sorted(p.name for p in ws.iterdir()) == ["data.csv"]  # no temporary left
