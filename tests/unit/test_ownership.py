"""src/ci_mcp/ownership.py over the files facade: an upload is its principal's, another principal's file is "not
found" (the same answer an unknown id gets), listings show only the caller's files, and without a principal (stdio)
everything passes through. Over HTTP with real tokens: tests/local/test_http_auth.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ci_mcp.errors import NotFoundError
from ci_mcp.files import Files
from ci_mcp.ownership import OwnedFiles, Owners
from ci_mcp.store import FileStore

pytestmark = pytest.mark.anyio


class Caller:
    """Who is calling: set by the test, read by the wrapper as the server reads the request's token."""

    def __init__(self) -> None:
        self.principal: str | None = None

    def __call__(self) -> str | None:
        return self.principal


@pytest.fixture
def parts(tmp_path: Path) -> Iterator[tuple[OwnedFiles, Caller, FileStore]]:
    store = FileStore(tmp_path / "data")
    owners = Owners(tmp_path / "data")
    caller = Caller()
    yield OwnedFiles(Files(store, max_upload_bytes=1000), owners, caller), caller, store
    owners.close()
    store.close()


async def test_a_principal_sees_only_its_own_uploads(parts: tuple[OwnedFiles, Caller, FileStore]) -> None:
    files, caller, _ = parts
    caller.principal = "alice"
    mine = await files.upload("a.csv", b"a\n")
    caller.principal = "bob"
    theirs = await files.upload("b.csv", b"b\n")

    assert [f.file_id for f in await files.list()] == [theirs.file_id]
    for look in (files.info, files.path):
        with pytest.raises(NotFoundError, match=f"No file with id '{mine.file_id}'"):
            await look(mine.file_id)
    caller.principal = "alice"
    assert await files.info(mine.file_id) == mine
    assert (await files.path(mine.file_id)).read_bytes() == b"a\n"


async def test_without_a_principal_every_file_is_visible(parts: tuple[OwnedFiles, Caller, FileStore]) -> None:
    files, caller, store = parts
    caller.principal = "alice"
    owned = await files.upload("a.csv", b"a\n")
    caller.principal = None
    unowned = await files.upload("s.csv", b"s\n")

    assert {f.file_id for f in await files.list()} == {owned.file_id, unowned.file_id}
    caller.principal = "alice"
    assert [f.file_id for f in await files.list()] == [owned.file_id]  # an upload over stdio is no one's


async def test_listing_another_principals_session_is_not_found(parts: tuple[OwnedFiles, Caller, FileStore]) -> None:
    files, caller, _ = parts
    caller.principal = "alice"
    with pytest.raises(NotFoundError, match="No session with id 'sess-0'"):
        await files.list("sess-0")
