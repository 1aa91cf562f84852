"""src/ci_mcp/files.py: the server's files facade (uploads, lookups, listings, the backend's upload hook) and the one
write path for generated files, which never writes on the event loop."""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from ci_mcp.errors import FileTooLargeError, InvalidInputError, NotFoundError
from ci_mcp.files import Files, files_for, keep_generated, keep_generated_now
from ci_mcp.models import FileInfo
from ci_mcp.store import FileStore

pytestmark = pytest.mark.anyio


@pytest.fixture
def store(tmp_path: Path) -> Iterator[FileStore]:
    s = FileStore(tmp_path / "data")
    yield s
    s.close()


class Hooked:
    """A backend's side of the seam: only the upload hook (`AttachesFiles`)."""

    def __init__(self, fails: Exception | None = None) -> None:
        self.stored: list[FileInfo] = []
        self.fails = fails

    async def file_stored(self, info: FileInfo) -> None:
        self.stored.append(info)
        if self.fails is not None:
            raise self.fails


async def test_an_inline_upload_is_stored_and_served_back(store: FileStore) -> None:
    files = Files(store, max_upload_bytes=100)
    info = await files.upload("a.csv", b"x,y\n1,2\n")

    assert (info.name, info.origin, info.size, info.media_type) == ("a.csv", "upload", 8, "text/csv")
    assert await files.info(info.file_id) == info
    assert (await files.path(info.file_id)).read_bytes() == b"x,y\n1,2\n"
    assert await files.list() == [info]
    assert await files.list("sess-none") == []


async def test_a_local_file_is_copied_in_and_one_past_the_limit_leaves_nothing(
    store: FileStore, tmp_path: Path
) -> None:
    files = Files(store, max_upload_bytes=10)
    small, big = tmp_path / "small.txt", tmp_path / "big.txt"
    small.write_bytes(b"0123456789")
    big.write_bytes(b"0123456789!")

    info = await files.upload("small.txt", small)
    with pytest.raises(FileTooLargeError, match="limit of 10 bytes"):
        await files.upload("big.txt", big)

    assert (await files.path(info.file_id)).read_bytes() == b"0123456789"
    assert [f.name for f in await files.list()] == ["small.txt"]


async def test_an_unknown_id_is_not_found(store: FileStore) -> None:
    files = Files(store, max_upload_bytes=10)
    with pytest.raises(NotFoundError, match="No file with id 'file-nope'"):
        await files.info("file-nope")
    with pytest.raises(NotFoundError, match="No file with id 'file-nope'"):
        await files.path("file-nope")


async def test_the_backend_hears_of_each_upload_once_it_is_stored(store: FileStore) -> None:
    backend = Hooked()
    files = files_for(backend, store, 100)

    info = await files.upload("a.txt", b"hello")

    assert backend.stored == [info]
    assert store.read(info.file_id) == b"hello"  # stored before the hook ran


async def test_a_failing_hook_is_the_uploads_answer_and_the_stored_copy_stays(store: FileStore) -> None:
    files = files_for(Hooked(fails=InvalidInputError("Azure could not process 'a.txt'")), store, 100)

    with pytest.raises(InvalidInputError, match="could not process"):
        await files.upload("a.txt", b"hello")

    assert [f.name for f in store.list()] == ["a.txt"]


async def test_a_backend_without_the_hook_is_never_asked(store: FileStore) -> None:
    class SessionsOnly:
        name = "plain"

    files = files_for(SessionsOnly(), store, 100)
    assert files.on_stored is None
    assert (await files.upload("a.txt", b"x")).name == "a.txt"


async def test_generated_files_are_written_in_a_worker_thread_never_on_the_event_loop(
    store: FileStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    writers: list[int] = []
    put_bytes = store.put_bytes

    def recording(*args: object, **kwargs: object) -> FileInfo:
        writers.append(threading.get_ident())
        return put_bytes(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(store, "put_bytes", recording)
    info = await keep_generated(store, "chart.png", b"\x89PNG", session_id="sess-1", media_type="image/png")

    assert writers and writers[0] != threading.get_ident()
    assert (info.origin, info.session_id, info.media_type) == ("generated", "sess-1", "image/png")
    assert store.list("sess-1") == [info]


def test_a_generated_file_from_a_stream_is_bounded(store: FileStore) -> None:
    info = keep_generated_now(store, "out.txt", io.BytesIO(b"abc"), session_id="sess-1", max_bytes=3)
    assert (store.read(info.file_id), info.origin) == (b"abc", "generated")
    with pytest.raises(FileTooLargeError):
        keep_generated_now(store, "big.txt", io.BytesIO(b"abcd"), session_id="sess-1", max_bytes=3)
    with pytest.raises(ValueError, match="needs max_bytes"):
        keep_generated_now(store, "x.txt", io.BytesIO(b"a"), session_id="sess-1")
