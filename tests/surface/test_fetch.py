"""fetch_generated_file and the ci-mcp://files/ resource: what comes back for each kind and size of file."""

from __future__ import annotations

import base64
from collections.abc import Callable

import pytest
from mcp import Client, MCPError
from mcp_types import BlobResourceContents, CallToolResult, EmbeddedResource, TextResourceContents

from ci_mcp.settings import Settings
from tests.conftest import all_text, links, texts, uploaded_id
from tests.surface.conftest import connect

pytestmark = pytest.mark.anyio


async def upload(client: Client, name: str, data: bytes) -> str:
    result = await client.call_tool(
        "upload_file", {"filename": name, "content_base64": base64.b64encode(data).decode()}
    )
    return uploaded_id(result)


async def fetch(client: Client, file_id: str) -> CallToolResult:
    return await client.call_tool("fetch_generated_file", {"file_id": file_id})


def embedded(result: CallToolResult) -> list[EmbeddedResource]:
    return [b for b in result.content if isinstance(b, EmbeddedResource)]


async def test_a_small_text_file_comes_back_as_text(client: Client) -> None:
    fid = await upload(client, "out.csv", b"k,v\n1,2\n")
    result = await fetch(client, f"  {fid} ")
    assert texts(result) == [f'{fid}: "out.csv" (8 bytes, text/csv)', "k,v\n1,2\n"]


async def test_a_binary_file_comes_back_embedded_and_a_large_one_as_a_link(
    make_settings: Callable[..., Settings],
) -> None:
    async with connect(make_settings(inline_image_bytes=1_000, inline_text_fetch_bytes=100)) as (client, _):
        small = await upload(client, "blob.bin", bytes(range(256)))
        (block,) = embedded(await fetch(client, small))
        assert isinstance(block.resource, BlobResourceContents)
        assert base64.b64decode(block.resource.blob) == bytes(range(256))
        assert str(block.resource.uri) == f"ci-mcp://files/{small}"
        # text over the inline text size, but under the embedding size, is embedded too
        mid = await upload(client, "mid.txt", b"t" * 500)
        assert len(embedded(await fetch(client, mid))) == 1
        large = await upload(client, "big.bin", bytes(range(256)) * 8)
        result = await fetch(client, large)
        assert not result.is_error and embedded(result) == []
        assert "too large to return inline. Pass save_to" in texts(result)[0]
        [link] = links(result)
        assert str(link.uri) == f"ci-mcp://files/{large}" and link.size == 2048


async def test_an_unknown_id_says_where_ids_come_from(client: Client) -> None:
    result = await fetch(client, "file-doesnotexist")
    assert result.is_error and "upload_file or run_code_analysis" in all_text(result)
    swapped = await fetch(client, "sess-0123")
    assert swapped.is_error and "looks like a session id" in all_text(swapped)


async def test_the_resource_gives_each_file_its_own_media_type(client: Client) -> None:
    text_id = await upload(client, "a.csv", b"x,y\n1,2\n")
    blob_id = await upload(client, "b.bin", b"\x00\x01")
    (text,) = (await client.read_resource(f"ci-mcp://files/{text_id}")).contents
    assert isinstance(text, TextResourceContents) and text.text == "x,y\n1,2\n" and text.mime_type == "text/csv"
    (blob,) = (await client.read_resource(f"ci-mcp://files/{blob_id}")).contents
    assert isinstance(blob, BlobResourceContents) and base64.b64decode(blob.blob) == b"\x00\x01"
    assert blob.mime_type == "application/octet-stream"


async def test_the_resource_refuses_unknown_and_oversized_files_with_what_to_do(
    make_settings: Callable[..., Settings],
) -> None:
    async with connect(make_settings(inline_image_bytes=100, inline_text_fetch_bytes=50)) as (client, _):
        with pytest.raises(MCPError, match="No file with id 'file-nope'"):
            await client.read_resource("ci-mcp://files/file-nope")
        big = await upload(client, "big.bin", b"z" * 101)
        with pytest.raises(MCPError, match=r"over the 100-byte limit.*save_to") as caught:
            await client.read_resource(f"ci-mcp://files/{big}")
        assert f'fetch_generated_file(file_id="{big}", save_to=' in str(caught.value)
        fits = await upload(client, "fits.bin", b"z" * 100)
        (contents,) = (await client.read_resource(f"ci-mcp://files/{fits}")).contents
        assert isinstance(contents, BlobResourceContents) and len(base64.b64decode(contents.blob)) == 100


async def test_resources_list_the_newest_files_first(client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("ci_mcp.server.MAX_LISTED_RESOURCES", 3)
    assert (await client.list_resources()).resources == []
    ids = [await upload(client, f"f{i}.txt", f"data{i}".encode()) for i in range(5)]
    resources = (await client.list_resources(cache_mode="refresh")).resources
    assert [str(r.uri) for r in resources] == [f"ci-mcp://files/{i}" for i in ids[::-1][:3]]
    assert [(r.name, r.mime_type, r.size) for r in resources] == [("f4.txt", "text/plain", 5)] + [
        ("f3.txt", "text/plain", 5),
        ("f2.txt", "text/plain", 5),
    ]
    assert resources[0].description == f"{ids[4]}: upload file"
