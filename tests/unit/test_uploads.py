"""src/ci_mcp/uploads.py: what an upload's arguments may be, decided before anything is stored (the checks
upload_file makes through `tools.ToolHandlers`; over the MCP client: tests/surface/test_uploads.py)."""

from __future__ import annotations

import base64

import pytest

from ci_mcp.errors import FileTooLargeError, InvalidInputError
from ci_mcp.uploads import (
    MAX_FILE_IDS,
    check_local_size,
    chunk_content,
    file_ids_of,
    first_chunk_name,
    inline_bytes,
    one_source,
)


@pytest.mark.parametrize(("path", "content"), [(None, None), ("/data/a.csv", "YQ==")])
def test_an_upload_names_its_bytes_exactly_one_way(path: str | None, content: str | None) -> None:
    with pytest.raises(InvalidInputError, match="exactly one of `path` or `content_base64`"):
        one_source(path, content)


@pytest.mark.parametrize(("path", "content"), [("/data/a.csv", None), (None, ""), (None, "YQ==")])
def test_a_path_or_inline_content_alone_is_one_source(path: str | None, content: str | None) -> None:
    one_source(path, content)


def test_inline_bytes_are_the_decoded_content_within_the_limit() -> None:
    assert inline_bytes(base64.b64encode(b"abc").decode(), "a.csv", 3) == b"abc"
    with pytest.raises(FileTooLargeError, match="over the limit of 2 bytes"):
        inline_bytes(base64.b64encode(b"abc").decode(), "a.csv", 2)


@pytest.mark.parametrize("filename", [None, "", "   "])
def test_inline_bytes_need_a_filename_before_anything_is_decoded(filename: str | None) -> None:
    with pytest.raises(InvalidInputError, match="`filename` is required with content_base64"):
        inline_bytes("@@not base64@@", filename, 100)


def test_empty_inline_content_is_refused() -> None:
    with pytest.raises(InvalidInputError, match="'a.csv' is empty"):
        inline_bytes("", "a.csv", 100)


def test_a_local_file_may_be_exactly_the_limit_but_not_empty_or_over() -> None:
    check_local_size("/data/a.csv", 1000, 1000)
    with pytest.raises(InvalidInputError, match="'/data/a.csv' is empty"):
        check_local_size("/data/a.csv", 0, 1000)
    with pytest.raises(FileTooLargeError, match="1,001 bytes, over the limit of 1,000"):
        check_local_size("/data/a.csv", 1001, 1000)


def test_a_chunk_is_inline_content_never_a_path() -> None:
    assert chunk_content(None, "YQ==") == "YQ=="
    assert chunk_content(None, "") == ""
    for path, content in (("/data/a.csv", "YQ=="), ("/data/a.csv", None), (None, None)):
        with pytest.raises(InvalidInputError, match="each chunk as `content_base64`"):
            chunk_content(path, content)


def test_the_first_chunk_names_the_file_and_starts_at_offset_zero() -> None:
    assert first_chunk_name("a.csv", 0) == "a.csv"
    with pytest.raises(InvalidInputError, match="`filename` is required with the first chunk"):
        first_chunk_name(" ", 0)
    with pytest.raises(InvalidInputError, match="starts at offset 0"):
        first_chunk_name("a.csv", 5)


def test_file_ids_are_stripped_distinct_in_order_and_bounded() -> None:
    assert file_ids_of(None) == ()
    assert file_ids_of([" b ", "a", "b", "  "]) == ("b", "a")
    assert len(file_ids_of([f"file-{i}" for i in range(MAX_FILE_IDS)] * 2)) == MAX_FILE_IDS
    with pytest.raises(InvalidInputError, match=f"at most {MAX_FILE_IDS}"):
        file_ids_of([f"file-{i}" for i in range(MAX_FILE_IDS + 1)])
