"""src/ci_mcp/store.py: bytes kept atomically (never a row without its file), identical content once, deletion,
the quota, and recovery when the store is opened again."""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from ci_mcp.errors import FileTooLargeError, NotFoundError, StorageFullError
from ci_mcp.store import FileStore, guess_media_type

MB = 1024 * 1024


@pytest.fixture
def store(tmp_path: Path) -> Iterator[FileStore]:
    s = FileStore(tmp_path / "data")
    yield s
    s.close()


def contents(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_put_keeps_the_bytes_and_their_record(store: FileStore, tmp_path: Path) -> None:
    info = store.put_bytes("a.csv", b"x,y\n", origin="upload")
    assert (info.name, info.size, info.media_type, info.origin, info.session_id) == (
        "a.csv",
        4,
        "text/csv",
        "upload",
        None,
    )
    assert info.file_id.startswith("file-") and len(info.sha256) == 64
    assert store.get(info.file_id) == info and store.read(info.file_id) == b"x,y\n"
    source = tmp_path / "src.bin"
    source.write_bytes(b"\x00" * (3 * MB + 5))  # more than one chunk
    from_path = store.put_path("s.bin", source, origin="generated", max_bytes=4 * MB, session_id="sess-1")
    assert store.read(from_path.file_id) == source.read_bytes()
    assert [f.file_id for f in store.list("sess-1")] == [from_path.file_id]
    assert [f.file_id for f in store.list()] == [info.file_id, from_path.file_id]
    assert contents(store.tmp_dir) == []


def test_a_failed_rename_leaves_neither_a_blob_nor_a_row(store: FileStore, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_rename(src: object, dst: object) -> None:
        raise OSError(5, "I/O error")

    monkeypatch.setattr(os, "replace", no_rename)
    with pytest.raises(OSError, match="I/O error"):
        store.put_bytes("a.csv", b"data", origin="upload")
    assert store.list() == [] and contents(store.files_dir) == [] and contents(store.tmp_dir) == []


def test_a_failed_insert_removes_the_blob_it_renamed(store: FileStore, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_row(*args: object, **kwargs: object) -> None:
        raise RuntimeError("database went away")

    monkeypatch.setattr(store, "_insert", no_row)
    with pytest.raises(RuntimeError):
        store.put_bytes("a.csv", b"data", origin="upload")
    assert contents(store.files_dir) == [] and contents(store.tmp_dir) == []


def test_a_stream_over_its_limit_is_refused_and_leaves_nothing(store: FileStore) -> None:
    with pytest.raises(FileTooLargeError, match="larger than the limit of 10 bytes"):
        store.put_stream("big.bin", io.BytesIO(b"x" * 11), origin="upload", max_bytes=10)
    assert store.list() == [] and contents(store.tmp_dir) == [] and contents(store.files_dir) == []


def test_a_full_disk_is_said_with_the_data_directory(store: FileStore, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(StorageFullError, match="No space left on the disk holding the data directory") as caught:
        store.put_bytes("a.csv", b"data", origin="upload")
    assert caught.value.lost == "a.csv" and "CI_MCP_DATA_DIR" in str(caught.value)
    assert contents(store.tmp_dir) == []


def test_identical_content_is_stored_once(store: FileStore) -> None:
    first = store.put_bytes("a.csv", b"same", origin="generated", session_id="s")
    again = store.put_bytes("a.csv", b"same", origin="generated", session_id="s")
    assert again == first  # only touched again: the same record
    renamed = store.put_bytes("b.csv", b"same", origin="generated", session_id="s")
    other_session = store.put_bytes("a.csv", b"same", origin="generated", session_id="t")
    assert len({first.file_id, renamed.file_id, other_session.file_id}) == 3
    inodes = {os.stat(store.path(f.file_id)).st_ino for f in (first, renamed, other_session)}
    assert len(inodes) == 1  # hard links to one blob
    assert store.used_bytes() == 4
    different = store.put_bytes("a.csv", b"diff", origin="generated", session_id="s")
    assert different.file_id != first.file_id and store.used_bytes() == 8


def test_delete_forgets_one_file_and_keeps_its_twins(store: FileStore) -> None:
    a = store.put_bytes("a.txt", b"twin", origin="upload")
    b = store.put_bytes("b.txt", b"twin", origin="upload")
    store.delete(a.file_id)
    with pytest.raises(NotFoundError, match=f"No file with id '{a.file_id}'"):
        store.get(a.file_id)
    assert not (store.files_dir / a.file_id).exists()
    assert store.read(b.file_id) == b"twin" and [f.file_id for f in store.list()] == [b.file_id]
    store.delete(a.file_id)  # twice: nothing happens


def test_the_quota_refuses_new_content_and_names_the_setting(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "data", max_bytes=10)
    try:
        kept = store.put_bytes("a.bin", b"x" * 8, origin="upload")
        with pytest.raises(StorageFullError, match="CI_MCP_MAX_STORE_MB") as caught:
            store.put_bytes("b.bin", b"y" * 3, origin="upload")
        assert caught.value.lost == "b.bin" and "'b.bin' (3 bytes) was not kept" in str(caught.value)
        assert [f.file_id for f in store.list()] == [kept.file_id] and contents(store.tmp_dir) == []
        twin = store.put_bytes("a-copy.bin", b"x" * 8, origin="upload")  # no new bytes: allowed at the quota
        assert store.used_bytes() == 8
        store.put_bytes("c.bin", b"z" * 2, origin="upload")  # exactly at the quota
        store.delete(kept.file_id)
        store.delete(twin.file_id)
        store.put_bytes("d.bin", b"w" * 8, origin="upload")  # room again
    finally:
        store.close()


def test_opening_again_removes_temporaries_orphan_blobs_and_rows_without_blobs(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "data")
    kept = store.put_bytes("kept.txt", b"k", origin="upload")
    lost = store.put_bytes("lost.txt", b"l", origin="upload")
    store.close()
    (tmp_path / "data" / "files" / lost.file_id).unlink()  # a blob deleted by hand
    (tmp_path / "data" / "files" / "file-orphan").write_bytes(b"o")  # a crash before the row landed
    (tmp_path / "data" / "tmp" / "half").write_bytes(b"h")
    (tmp_path / "data" / "tmp" / "dir").mkdir()
    reopened = FileStore(tmp_path / "data")
    try:
        assert [f.file_id for f in reopened.list()] == [kept.file_id]
        assert contents(reopened.files_dir) == [kept.file_id] and contents(reopened.tmp_dir) == []
    finally:
        reopened.close()


@pytest.mark.parametrize(
    ("name", "media_type"),
    [
        ("a.CSV", "text/csv"),
        ("x.parquet", "application/vnd.apache.parquet"),
        ("p.png", "image/png"),
        ("z", "application/octet-stream"),
    ],
)
def test_media_types_come_from_the_name(name: str, media_type: str) -> None:
    assert guess_media_type(name) == media_type


def test_ids_a_backend_recognises_resolve_to_the_stored_file_and_others_stay_unknown(store: FileStore) -> None:
    info = store.put_bytes("bars.png", b"\x89PNG", origin="generated", session_id="sess-1")

    def other_ids(file_id: str) -> str | None:
        if file_id == "assistant-known":
            return info.file_id
        if file_id.startswith("assistant-"):
            raise NotFoundError(f"'{file_id}' is the service's id, not ours")
        return None

    store.recognise_ids(other_ids)

    assert store.get("assistant-known") == info
    assert store.path("assistant-known") == store.path(info.file_id)
    with pytest.raises(NotFoundError, match="the service's id"):
        store.get("assistant-other")
    with pytest.raises(NotFoundError, match="No file with id 'file-nope'"):
        store.get("file-nope")
