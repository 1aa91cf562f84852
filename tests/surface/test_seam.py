"""The seam between the MCP face and the backends: files are the server's, a backend runs sessions.

The Backend protocol has no file methods; the server serves uploads, fetches, listings and the files resource from
its store (`files.py`), and a backend that wants to know of uploads implements the one hook, `file_stored`."""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from mcp import Client
from mcp_types import TextResourceContents

from ci_mcp.backends.base import AttachesFiles, Backend
from ci_mcp.errors import InvalidInputError
from ci_mcp.models import FileInfo
from ci_mcp.settings import Settings
from ci_mcp.store import FileStore
from tests.conftest import all_text, generated_ids, session_of, uploaded_id
from tests.fakes import FakeBackend, Generated, Step
from tests.surface.conftest import MB, connect

pytestmark = pytest.mark.anyio

SESSIONS_AND_RUNS = {
    "name",
    "accepts_code",
    "accepts_request",
    "data_mount",
    "start",
    "aclose",
    "run",
    "close_session",
    "sessions",
    "describe",
}
FILE_METHODS = ("upload", "file_info", "file_path", "list_files", "file_stored")


def protocol_members(protocol: type) -> set[str]:
    own = set(vars(protocol)) | set(getattr(protocol, "__annotations__", {}))
    return {m for m in own if not m.startswith("_")}


def test_the_backend_protocol_is_sessions_and_runs_and_the_hook_is_apart() -> None:
    assert protocol_members(Backend) == SESSIONS_AND_RUNS
    assert protocol_members(AttachesFiles) == {"file_stored"}


async def test_every_file_tool_works_over_a_backend_without_file_methods(client: Client, backend: FakeBackend) -> None:
    assert not any(hasattr(backend, m) for m in FILE_METHODS)
    upload = await client.call_tool("upload_file", {"content_base64": "aGVsbG8=", "filename": "in.txt"})
    up = uploaded_id(upload)
    backend.script(Step(files=[Generated("out.txt", b"made by the run")]))

    ran = await client.call_tool("run_code_analysis", {"code": "x", "file_ids": [up]})
    out = generated_ids(ran)["out.txt"]
    fetched = await client.call_tool("fetch_generated_file", {"file_id": out})
    listed = all_text(await client.call_tool("list_files", {"session_id": session_of(ran)}))
    (contents,) = (await client.read_resource(f"ci-mcp://files/{up}")).contents
    resources = await client.list_resources()

    assert backend.requests[0].file_ids == (up,)
    assert "made by the run" in all_text(fetched)
    assert listed.startswith(out) and '"out.txt"' in listed
    assert isinstance(contents, TextResourceContents) and contents.text == "hello"
    assert {str(r.uri) for r in resources.resources} == {f"ci-mcp://files/{up}", f"ci-mcp://files/{out}"}


@dataclass
class AttachingBackend(FakeBackend):
    """A scripted backend that, like the Azure ones, wants each upload sent to its service."""

    sent: list[FileInfo] = field(default_factory=list)
    refuse: Exception | None = None

    async def file_stored(self, info: FileInfo) -> None:
        assert self.store.read(info.file_id)  # stored before the backend hears of it
        self.sent.append(info)
        if self.refuse is not None:
            raise self.refuse


async def test_a_backend_with_the_hook_hears_of_each_upload_and_its_refusal_is_the_tools_answer(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings()
    backend = AttachingBackend(FileStore(settings.data_dir, max_bytes=settings.max_store_mb * MB))
    async with connect(settings, backend) as (client, _):
        ok = await client.call_tool("upload_file", {"content_base64": "YQ==", "filename": "a.csv"})
        assert [f.file_id for f in backend.sent] == [uploaded_id(ok)]

        backend.refuse = InvalidInputError("The service could not process 'b.xlsx'; convert it and upload again.")
        payload = base64.b64encode(b"PK").decode()
        refused = await client.call_tool("upload_file", {"content_base64": payload, "filename": "b.xlsx"})

    assert refused.is_error and "could not process 'b.xlsx'" in all_text(refused)
    assert [f.name for f in backend.sent] == ["a.csv", "b.xlsx"]
