"""upload_file's arguments: what is refused, with which words, and what the backend receives."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable
from pathlib import Path

import pytest
from mcp import Client

from ci_mcp.settings import Settings
from tests.conftest import all_text, uploaded_id
from tests.fakes import FakeBackend
from tests.surface.conftest import connect, fake_backend

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        ({"path": "/etc/passwd"}, "outside the directories"),
        ({"path": "MISSING"}, "No file at"),
        ({"path": "DIR"}, "is a directory"),
        ({"path": "EMPTY"}, "empty (0 bytes)"),
        ({"path": "   "}, "`path` is empty"),
        ({}, "exactly one of"),
        ({"path": "EMPTY", "content_base64": "YQ==", "filename": "a.csv"}, "exactly one of"),
        ({"content_base64": "@@notbase64@@", "filename": "a.csv"}, "not valid base64"),
        ({"content_base64": "YQ=="}, "`filename` is required"),
        ({"content_base64": "YQ==", "filename": "  "}, "`filename` is required"),
        ({"content_base64": "", "filename": "a.csv"}, "empty (0 bytes)"),
        ({"content_base64": "YQ==", "filename": "dir/.."}, "plain file name"),
    ],
)
async def test_bad_uploads_get_a_clear_error_and_the_server_keeps_serving(
    client: Client, backend: FakeBackend, allowed: Path, arguments: dict[str, str], expected: str
) -> None:
    (allowed / "sub").mkdir()
    (allowed / "empty.csv").touch()
    names = {"MISSING": str(allowed / "nope.csv"), "DIR": str(allowed / "sub"), "EMPTY": str(allowed / "empty.csv")}
    args = {k: names.get(v, v) for k, v in arguments.items()}
    result = await client.call_tool("upload_file", args)
    assert result.is_error, all_text(result)
    assert expected in all_text(result), all_text(result)
    assert backend.store.list() == []
    ok = await client.call_tool("upload_file", {"content_base64": "YQ==", "filename": "a.csv"})
    assert not ok.is_error, all_text(ok)


async def test_upload_refuses_files_over_the_size_limits_and_keeps_nothing(
    make_settings: Callable[..., Settings], allowed: Path
) -> None:
    settings = make_settings(max_upload_bytes=1000, max_inline_upload_bytes=10)
    (allowed / "big.csv").write_bytes(b"x" * 1001)
    (allowed / "fits.csv").write_bytes(b"x" * 1000)
    async with connect(settings) as (client, backend):
        result = await client.call_tool("upload_file", {"path": str(allowed / "big.csv")})
        assert result.is_error and "over the limit of 1,000" in all_text(result), all_text(result)
        inline = base64.b64encode(b"y" * 11).decode()
        result = await client.call_tool("upload_file", {"content_base64": inline, "filename": "b.csv"})
        assert result.is_error and "Inline content is over the limit of 10 bytes" in all_text(result)
        assert backend.store.list() == []
        result = await client.call_tool("upload_file", {"path": str(allowed / "fits.csv")})
        assert not result.is_error, all_text(result)
        inline = base64.b64encode(b"y" * 10).decode()
        result = await client.call_tool("upload_file", {"content_base64": inline, "filename": "b.csv"})
        assert not result.is_error, all_text(result)


async def test_an_upload_says_its_id_size_type_and_where_the_code_finds_it(
    client: Client, backend: FakeBackend, allowed: Path
) -> None:
    (allowed / "data.csv").write_text("a,b\n1,2\n")
    result = await client.call_tool("upload_file", {"path": str(allowed / "data.csv")})
    fid = uploaded_id(result)
    text = all_text(result)
    assert "8 bytes" in text and "text/csv" in text and "/mnt/data/data.csv" in text
    assert f'file_ids=["{fid}"]' in text
    assert backend.store.read(fid) == b"a,b\n1,2\n"
    assert result.meta is not None
    assert result.meta["ci-mcp/ids"] == {"files": [{"file_id": fid, "name": "data.csv", "media_type": "text/csv"}]}


async def test_without_a_data_mount_the_upload_names_the_working_directory(settings: Settings) -> None:
    async with connect(settings, fake_backend(settings, data_mount="")) as (client, _):
        result = await client.call_tool("upload_file", {"content_base64": "YQ==", "filename": "a.csv"})
        assert 'as "a.csv" in its working directory' in all_text(result), all_text(result)


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        ("reports/q1.csv", "q1.csv"),
        ("C:\\data\\q2.csv", "q2.csv"),
        ("bad\x01name.csv", "bad_name.csv"),
        (".ci-mcp-x.csv", "_ci-mcp-x.csv"),
    ],
)
async def test_an_inline_upload_keeps_only_a_usable_name_and_says_so(
    client: Client, backend: FakeBackend, given: str, stored: str
) -> None:
    result = await client.call_tool("upload_file", {"content_base64": "YQ==", "filename": given})
    fid = uploaded_id(result)
    assert backend.store.get(fid).name == stored
    text = all_text(result)
    assert f'changed to "{stored}"' in text, text


async def test_a_name_kept_as_given_is_not_reported_as_changed(client: Client) -> None:
    result = await client.call_tool("upload_file", {"content_base64": "YQ==", "filename": "Umsätze 2024.csv"})
    assert "changed" not in all_text(result) and '"Umsätze 2024.csv"' in all_text(result)


async def test_a_local_upload_may_be_renamed_with_filename(client: Client, backend: FakeBackend, allowed: Path) -> None:
    (allowed / "export-1234.csv").write_text("a\n1\n")
    result = await client.call_tool("upload_file", {"path": str(allowed / "export-1234.csv"), "filename": "s.csv"})
    assert backend.store.get(uploaded_id(result)).name == "s.csv"


async def test_chunks_make_one_file_only_once_the_checksum_matches(client: Client, backend: FakeBackend) -> None:
    data = bytes(range(256)) * 8
    halves = [base64.b64encode(data[:1000]).decode(), base64.b64encode(data[1000:]).decode()]
    first = await client.call_tool("upload_file", {"content_base64": halves[0], "filename": "c.bin", "more": True})
    assert not first.is_error, all_text(first)
    upload_id = all_text(first).split("upload ")[1].split(" ")[0]
    assert backend.store.list() == []
    wrong = await client.call_tool(
        "upload_file", {"content_base64": halves[1], "upload_id": upload_id, "offset": 999, "more": True}
    )
    assert wrong.is_error and "offset=1000" in all_text(wrong), all_text(wrong)
    digest = hashlib.sha256(data).hexdigest()
    last = await client.call_tool(
        "upload_file", {"content_base64": halves[1], "upload_id": upload_id, "offset": 1000, "sha256": digest}
    )
    fid = uploaded_id(last)
    assert backend.store.read(fid) == data
    again = await client.call_tool("upload_file", {"content_base64": "", "upload_id": upload_id, "sha256": "0"})
    assert again.is_error and "No unfinished upload" in all_text(again)


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        ({"path": "/x", "more": True}, "each chunk as `content_base64`"),
        ({"content_base64": "YQ==", "more": True}, "`filename` is required with the first chunk"),
        ({"content_base64": "YQ==", "filename": "a", "offset": 5, "more": True}, "starts at offset 0"),
        ({"content_base64": "YQ==", "upload_id": "up-nothere", "more": True}, "No unfinished upload"),
        ({"content_base64": "YQ==", "upload_id": "../../etc", "more": True}, "No unfinished upload"),
    ],
)
async def test_bad_chunks_get_a_clear_error(client: Client, arguments: dict[str, object], expected: str) -> None:
    result = await client.call_tool("upload_file", arguments)
    assert result.is_error and expected in all_text(result), all_text(result)
