"""What clients on each protocol version see: content they can parse, stored files as resources, honest
capabilities."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import mcp.client.session
import pytest
from mcp import Client
from mcp_types import CallToolResult

from ci_mcp.models import TextOutput
from ci_mcp.settings import Settings
from tests.conftest import all_text, generated_ids, links, session_of, uploaded_id
from tests.fakes import FakeBackend, Generated, Step
from tests.surface.conftest import connect, fake_backend

pytestmark = pytest.mark.anyio

OLD_VERSIONS = ["2024-11-05", "2025-03-26"]


@asynccontextmanager
async def client_at(
    settings: Settings, version: str | None, monkeypatch: pytest.MonkeyPatch, backend: FakeBackend | None = None
) -> AsyncIterator[Client]:
    """An in-memory client; `version` pins the initialize handshake to that protocol version (None: current)."""
    options: dict[str, str] = {}
    if version is not None:
        # The SDK client always offers its newest handshake version; pin the offer the way an older client makes it.
        monkeypatch.setattr(mcp.client.session, "LATEST_HANDSHAKE_VERSION", version)
        options["mode"] = "legacy"
    async with connect(settings, backend, **options) as (client, _):
        if version is not None:
            assert client.protocol_version == version
        yield client


async def upload(client: Client, name: str, data: bytes) -> str:
    result = await client.call_tool(
        "upload_file", {"filename": name, "content_base64": base64.b64encode(data).decode()}
    )
    return uploaded_id(result)


def no_links(result: CallToolResult) -> None:
    assert not links(result)
    assert all(block.type != "resource_link" for block in result.content)


@pytest.mark.parametrize("version", OLD_VERSIONS)
async def test_an_old_client_gets_a_large_file_link_as_text(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch, version: str
) -> None:
    async with client_at(make_settings(inline_image_bytes=1_000), version, monkeypatch) as client:
        fid = await upload(client, "blob.bin", bytes(range(256)) * 20)
        result = await client.call_tool("fetch_generated_file", {"file_id": fid})
        assert not result.is_error, all_text(result)
        no_links(result)
        text = all_text(result)
        assert f"ci-mcp://files/{fid}" in text and "blob.bin" in text and "5,120 bytes" in text
        assert f'fetch_generated_file(file_id="{fid}")' in text


async def test_a_current_client_still_gets_a_resource_link(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    for version in (None, "2025-06-18"):
        async with client_at(make_settings(inline_image_bytes=1_000), version, monkeypatch) as client:
            fid = await upload(client, "blob.bin", bytes(range(256)) * 20)
            result = await client.call_tool("fetch_generated_file", {"file_id": fid})
            [link] = links(result)
            assert str(link.uri) == f"ci-mcp://files/{fid}"


@pytest.mark.parametrize("version", [OLD_VERSIONS[0], None])
async def test_run_results_with_a_written_file_fit_the_clients_version(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, version: str | None
) -> None:
    backend = fake_backend(settings)
    async with client_at(settings, version, monkeypatch, backend) as client:
        backend.script(Step(outputs=[TextOutput("stdout-marker")], files=[Generated("report.txt", b"hello")]))
        result = await client.call_tool("run_code_analysis", {"code": "write report.txt"})
        assert not result.is_error, all_text(result)
        text = all_text(result)
        assert session_of(result).startswith("sess")
        assert "stdout-marker" in text
        if version is None:
            [link] = links(result)
            assert link.name == "report.txt"
        else:
            no_links(result)
            fid = generated_ids(result)["report.txt"]
            assert f"ci-mcp://files/{fid}" in text and f'fetch_generated_file(file_id="{fid}")' in text


@pytest.mark.parametrize("version", [OLD_VERSIONS[0], None])
async def test_resources_list_has_the_stored_files_newest_first(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, version: str | None
) -> None:
    async with client_at(settings, version, monkeypatch) as client:
        assert (await client.list_resources()).resources == []
        first = await upload(client, "a.csv", b"x,y\n1,2\n")
        second = await upload(client, "b.json", b'{"k": 1}')
        resources = (await client.list_resources(cache_mode="refresh")).resources
        assert [str(r.uri) for r in resources] == [f"ci-mcp://files/{second}", f"ci-mcp://files/{first}"]
        assert [(r.name, r.mime_type, r.size) for r in resources] == [
            ("b.json", "application/json", 8),
            ("a.csv", "text/csv", 8),
        ]
        read = await client.read_resource(f"ci-mcp://files/{first}")
        assert read.contents[0].text == "x,y\n1,2\n"  # type: ignore[union-attr]


async def test_resources_list_is_bounded(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("ci_mcp.server.MAX_LISTED_RESOURCES", 3)
    async with client_at(settings, None, monkeypatch) as client:
        ids = [await upload(client, f"f{i}.txt", b"data") for i in range(5)]
        resources = (await client.list_resources(cache_mode="refresh")).resources
        assert [str(r.uri) for r in resources] == [f"ci-mcp://files/{i}" for i in ids[::-1][:3]]


@pytest.mark.parametrize("version", [OLD_VERSIONS[0], "2025-11-25"])
async def test_initialize_does_not_advertise_prompts(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, version: str
) -> None:
    async with client_at(settings, version, monkeypatch) as client:
        caps = client.session.initialize_result.capabilities  # type: ignore[union-attr]
        assert caps.prompts is None
        assert caps.tools is not None and caps.resources is not None
