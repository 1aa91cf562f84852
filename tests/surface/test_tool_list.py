"""What a client learns before calling anything: the tools, their argument schemas and descriptions, the
instructions, the capabilities."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from mcp import Client

from ci_mcp.settings import Settings
from tests.surface.conftest import connect, fake_backend

pytestmark = pytest.mark.anyio

TOOLS = {"upload_file", "run_code_analysis", "fetch_generated_file", "list_files", "close_session"}


async def test_the_public_tools_declare_no_output_schema_and_describe_themselves(client: Client) -> None:
    tools = {t.name: t for t in (await client.list_tools()).tools}
    assert set(tools) == TOOLS
    for tool in tools.values():
        assert tool.output_schema is None, tool.name  # image blocks must survive in every client
        assert tool.description and len(tool.description) > 60, tool.name
        assert tool.annotations is not None and tool.annotations.title, tool.name
    assert tools["list_files"].annotations.read_only_hint is True  # type: ignore[union-attr]
    assert tools["run_code_analysis"].annotations.read_only_hint is False  # type: ignore[union-attr]


async def test_argument_schemas_name_every_argument_and_hide_the_injected_ones(client: Client) -> None:
    tools = {t.name: t for t in (await client.list_tools()).tools}
    props = {name: set(t.input_schema["properties"]) for name, t in tools.items()}
    assert props["run_code_analysis"] == {"code", "request", "file_ids", "session_id", "timeout_seconds"}
    assert props["upload_file"] == {"path", "content_base64", "filename", "more", "upload_id", "offset", "sha256"}
    assert props["fetch_generated_file"] == {"file_id", "save_to", "overwrite"}
    assert tools["fetch_generated_file"].input_schema["required"] == ["file_id"]
    assert tools["close_session"].input_schema["required"] == ["session_id"]
    assert "required" not in tools["run_code_analysis"].input_schema
    for tool in tools.values():  # the client's roots and the request context are the server's, not arguments
        assert not {"roots", "ctx"} & set(tool.input_schema["properties"]), tool.name


async def test_descriptions_carry_the_configured_limits_and_the_backends_own_words(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(
        max_upload_bytes=3 * 1024 * 1024,
        max_inline_upload_bytes=2 * 1024 * 1024,
        run_timeout_seconds=45,
        max_run_timeout_seconds=300,
    )
    backend = fake_backend(settings, description="Files sit on the moon.")
    async with connect(settings, backend) as (client, _):
        tools = {t.name: t for t in (await client.list_tools()).tools}
        upload = tools["upload_file"].description or ""
        assert "at most 2 MB" in upload and "up to 3 MB" in upload
        run = tools["run_code_analysis"]
        assert "Files sit on the moon." in (run.description or "")
        timeout = run.input_schema["properties"]["timeout_seconds"]["description"]
        assert "default 45 s" in timeout and "at most 300 s" in timeout
        assert "fake backend" in (client.instructions or "")
        assert "Files sit on the moon." in (client.instructions or "")


@pytest.mark.parametrize(("code", "request_"), [(True, False), (False, True), (True, True)])
async def test_the_instructions_and_schema_say_what_the_backend_accepts(
    settings: Settings, code: bool, request_: bool
) -> None:
    backend = fake_backend(settings, accepts_code=code, accepts_request=request_)
    async with connect(settings, backend) as (client, _):
        instructions = client.instructions or ""
        assert ("Python `code`" in instructions) == code
        assert ("natural-language `request`" in instructions) == request_
        run = next(t for t in (await client.list_tools()).tools if t.name == "run_code_analysis")
        described = run.input_schema["properties"]["request"]["description"]
        assert ("Not supported by this backend" in described) == (not request_)


async def test_capabilities_offer_tools_and_resources_but_no_prompts(client: Client) -> None:
    caps = client.server_capabilities
    assert caps is not None
    assert caps.prompts is None
    assert caps.tools is not None and caps.resources is not None
    (template,) = (await client.list_resource_templates()).resource_templates
    assert template.uri_template == "ci-mcp://files/{file_id}"


async def test_the_server_starts_and_closes_its_backend(settings: Settings) -> None:
    backend = fake_backend(settings)
    async with connect(settings, backend):
        assert backend.started and not backend.closed
    assert backend.closed
