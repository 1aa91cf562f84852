"""src/ci_mcp/paths.py: the allowed roots, what may be read and written, and the names files get."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ci_mcp import paths
from ci_mcp.errors import InvalidInputError, NotFoundError, PathNotAllowedError

# -- effective_roots ---------------------------------------------------------------------------------------------


def test_configured_roots_are_resolved_and_used_without_client_roots(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    roots = paths.effective_roots([tmp_path / "link" / ".." / "real", tmp_path / "link"], None, tmp_path, tmp_path)
    assert list(roots) == [real, real] and roots.reason == ""


@pytest.mark.parametrize("where", ["root", "home"])
def test_without_configured_roots_neither_the_disk_root_nor_home_is_a_root(tmp_path: Path, where: str) -> None:
    cwd = Path("/") if where == "root" else tmp_path
    roots = paths.effective_roots([], None, cwd, tmp_path)
    assert list(roots) == []
    said = "the file-system root" if where == "root" else "the home directory"
    assert f"CI_MCP_ALLOWED_DIRS is not set and the working directory ({cwd}) is {said}" in roots.reason


def test_without_configured_roots_a_project_directory_is_the_root(tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    assert list(paths.effective_roots([], None, project, tmp_path)) == [project]
    assert list(paths.effective_roots([], [project / "sub"], project, tmp_path)) == [project / "sub"]


def test_client_roots_narrow_the_configured_ones_and_never_widen_them(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        d.mkdir()
    assert list(paths.effective_roots([a, b], [Path("/")], tmp_path, tmp_path)) == [a, b]
    assert list(paths.effective_roots([a, b], [a / "x", a / "x"], tmp_path, tmp_path)) == [a / "x"]
    assert list(paths.effective_roots([a], [a / "x", b], tmp_path, tmp_path)) == [a / "x"]
    assert list(paths.effective_roots([a], [a], tmp_path, tmp_path)) == [a]


def test_client_roots_outside_every_configured_root_leave_none_and_say_why(tmp_path: Path) -> None:
    a = tmp_path / "a"
    a.mkdir()
    roots = paths.effective_roots([a], [tmp_path / "elsewhere"], tmp_path, tmp_path)
    assert list(roots) == []
    assert f"({tmp_path / 'elsewhere'}) do not overlap" in roots.reason and "from CI_MCP_ALLOWED_DIRS" in roots.reason
    implicit = paths.effective_roots([], [tmp_path / "elsewhere"], a, tmp_path)
    assert list(implicit) == [] and "the working directory" in implicit.reason


def test_roots_from_uris_takes_file_uris_only() -> None:
    uris = ["file:///srv/data%20set", "https://example.com/x", "file://", "file:///tmp/../srv"]
    assert paths.roots_from_uris(uris) == [Path("/srv/data set").resolve(), Path("/srv").resolve()]


# -- resolve_readable --------------------------------------------------------------------------------------------


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "root"
    r.mkdir()
    return r


def test_a_regular_file_inside_the_roots_resolves_to_its_real_path(root: Path) -> None:
    (root / "data.csv").write_text("a\n")
    (root / "sub").mkdir()
    (root / "alias.csv").symlink_to(root / "data.csv")
    assert paths.resolve_readable(str(root / "alias.csv"), [root]) == root / "data.csv"
    assert paths.resolve_readable("data.csv", [root]) == root / "data.csv"  # relative: from the first root
    assert paths.resolve_readable(str(root / "sub" / ".." / "data.csv"), [root]) == root / "data.csv"


@pytest.mark.parametrize(
    ("make", "error", "words"),
    [
        (lambda r: "  ", InvalidInputError, "`path` is empty"),
        (lambda r: str(r / "missing.csv"), NotFoundError, "No file at"),
        (lambda r: str(r / "loop"), InvalidInputError, "Cannot resolve"),
        (lambda r: str(r / "escape.csv"), PathNotAllowedError, "outside the directories this server may read"),
        (lambda r: str(r / ".ssh" / "id_ed25519"), PathNotAllowedError, "holds secrets"),
        (lambda r: str(r / ".env.local"), PathNotAllowedError, "holds secrets"),
        (lambda r: str(r / "tls.key"), PathNotAllowedError, "holds secrets"),
        (lambda r: str(r / "dir"), InvalidInputError, "is a directory"),
        (lambda r: str(r / "fifo"), PathNotAllowedError, "not a regular file"),
    ],
    ids=["empty", "missing", "loop", "escape", "ssh", "dotenv", "key", "dir", "fifo"],
)
def test_what_cannot_be_read_says_why(root: Path, make: object, error: type[Exception], words: str) -> None:
    (root / "loop").symlink_to(root / "loop")
    (root / "escape.csv").symlink_to("/etc/hostname")
    (root / ".ssh").mkdir()
    (root / ".ssh" / "id_ed25519").write_text("k")
    (root / ".env.local").write_text("K=v")
    (root / "tls.key").write_text("k")
    (root / "dir").mkdir()
    os.mkfifo(root / "fifo")
    assert callable(make)
    with pytest.raises(error, match=words):
        paths.resolve_readable(make(root), [root])


def test_with_no_roots_the_reason_is_the_error(root: Path) -> None:
    (root / "a.csv").write_text("a")
    roots = paths.Roots()
    roots.reason = "No directory: set CI_MCP_ALLOWED_DIRS."
    with pytest.raises(PathNotAllowedError, match="No directory: set CI_MCP_ALLOWED_DIRS."):
        paths.resolve_readable(str(root / "a.csv"), roots)


# -- resolve_writable and write_atomically -----------------------------------------------------------------------


def test_a_directory_target_gets_the_file_name(root: Path) -> None:
    assert paths.resolve_writable(str(root), "r.txt", [root], overwrite=False) == root / "r.txt"
    assert paths.resolve_writable(str(root / "new.txt"), "r.txt", [root], overwrite=False) == root / "new.txt"
    assert paths.resolve_writable("rel.txt", "r.txt", [root], overwrite=False) == root / "rel.txt"


def test_what_cannot_be_written_says_why(root: Path, tmp_path: Path) -> None:
    (root / "exists.txt").write_text("x")
    (root / "link.txt").symlink_to(root / "victim.txt")
    os.mkfifo(root / "fifo")
    cases: list[tuple[str, type[Exception], str]] = [
        (" ", InvalidInputError, "`save_to` is empty"),
        (str(root / "no" / "r.txt"), NotFoundError, "does not exist"),
        (str(tmp_path / "out.txt"), PathNotAllowedError, "outside the directories this server may write"),
        (str(root / ".env"), PathNotAllowedError, "holds secrets"),
        (str(root / "link.txt"), PathNotAllowedError, "symbolic link"),
        (str(root / "fifo"), PathNotAllowedError, "not a regular file"),
        (str(root / "exists.txt"), InvalidInputError, "overwrite=true"),
    ]
    for raw, error, words in cases:
        with pytest.raises(error, match=words):
            paths.resolve_writable(raw, "r.txt", [root], overwrite=False)
    assert paths.resolve_writable(str(root / "exists.txt"), "r.txt", [root], overwrite=True) == root / "exists.txt"
    with pytest.raises(PathNotAllowedError, match="symbolic link"):
        paths.resolve_writable(str(root / "link.txt"), "r.txt", [root], overwrite=True)


def test_write_atomically_replaces_the_target_and_leaves_no_temporary(root: Path, tmp_path: Path) -> None:
    source = tmp_path / "src.bin"
    source.write_bytes(b"new" * 1000)
    (root / "t.bin").write_bytes(b"old")
    paths.write_atomically(root / "t.bin", source)
    assert (root / "t.bin").read_bytes() == b"new" * 1000
    assert [p.name for p in root.iterdir()] == ["t.bin"]
    with pytest.raises(FileNotFoundError):
        paths.write_atomically(root / "u.bin", tmp_path / "missing")
    assert [p.name for p in root.iterdir()] == ["t.bin"]


# -- names -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("data.csv", "data.csv"),
        ("Umsätze 2024 (final).csv", "Umsätze 2024 (final).csv"),
        ("a/b/c.csv", "c.csv"),
        ("C:\\Users\\x\\d.csv", "d.csv"),
        ("tab\there\x1b[31m.csv", "tab_here_[31m.csv"),
        ("  padded.csv  ", "padded.csv"),
        ("", "file"),
        (".", "file"),
        ("..", "file"),
        ("dir/", "file"),
        (".ci-mcp-abc.tmp", "_ci-mcp-abc.tmp"),
        ("bad\udcffname.csv", "bad?name.csv"),  # a lone surrogate from a client
    ],
)
def test_workspace_name_changes_a_name_only_where_it_must(given: str, expected: str) -> None:
    assert paths.workspace_name(given) == expected


def test_workspace_name_keeps_at_most_255_bytes_and_the_extension_without_splitting_a_letter() -> None:
    name = paths.workspace_name("ä" * 200 + ".parquet")
    assert len(name.encode()) <= 255 and name.endswith(".parquet")
    assert set(name.removesuffix(".parquet")) == {"ä"}
    no_ext = paths.workspace_name("x" * 300)
    assert no_ext == "x" * 255
    long_ext = paths.workspace_name("a." + "e" * 300)  # an "extension" that long is not one
    assert len(long_ext.encode()) == 255 and long_ext.startswith("a.")


@pytest.mark.parametrize(
    ("given", "expected"),
    [("report.txt", "report.txt"), ("a/b/x;$(rm -rf).txt", "x_rm -rf_.txt"), ("...", "file"), ("ü.csv", "_.csv")],
)
def test_safe_name_is_safe_on_any_host_disk(given: str, expected: str) -> None:
    assert paths.safe_name(given) == expected
