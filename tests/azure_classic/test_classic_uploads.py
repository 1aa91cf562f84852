"""Uploads to the classic Files API: waiting for Azure's processing, and its failures (issue 9).

The real azure-ai-agents SDK hands `FileInfo.status` back as a `FileState` enum member; the emulator scripts the
statuses an upload goes through (`process_next_upload`).
"""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from mcp import Client
from mcp_types import TextContent

from ci_mcp.backends.azure.classic.backend import ClassicAgentsBackend
from ci_mcp.errors import BackendUnavailableError, InvalidInputError
from ci_mcp.models import TextOutput
from ci_mcp.server import create_server
from ci_mcp.settings import Settings
from ci_mcp.store import FileStore
from tests.azure_classic.conftest import Progress, Sleeps, code
from tests.azure_emulator.classic_routes import process_next_upload
from tests.azure_emulator.server import Emulator
from tests.conftest import files_of

pytestmark = pytest.mark.anyio

GET_FILE = "GET /files/{file_id}"


def _stdout(result: object) -> str:
    outputs = getattr(result, "outputs", ())
    return "".join(o.text for o in outputs if isinstance(o, TextOutput) and o.kind == "stdout")


async def test_an_upload_still_being_processed_is_waited_for_until_azure_says_processed(
    backend: ClassicAgentsBackend, emulator: Emulator, sleeps: Sleeps, progress: Progress
) -> None:
    process_next_upload(emulator.state, "uploaded", "pending", "running", "processed")
    mark = emulator.state.mark()

    info = await files_of(backend).upload("slow.csv", b"n\n1\n")

    assert emulator.state.count(GET_FILE, since=mark) == 3
    assert sleeps.calls == [0.25, 0.5, 1.0]
    result = await backend.run(code("print(open('/mnt/data/slow.csv').read())", info.file_id), progress)
    assert "n\n1" in _stdout(result)
    assert emulator.state.count("POST /files", since=mark) == 1


async def test_an_upload_azure_could_not_process_is_reported_with_the_services_detail(
    backend: ClassicAgentsBackend, emulator: Emulator
) -> None:
    process_next_upload(emulator.state, "running", "error", details="The file has an unsupported encoding.")

    with pytest.raises(InvalidInputError) as caught:
        await files_of(backend).upload("bad.csv", b"\xff\xfe")

    message = str(caught.value)
    assert "Azure could not process 'bad.csv': The file has an unsupported encoding." in message
    assert "convert the file and upload it again" in message


async def test_a_file_that_fails_processing_at_run_time_fails_the_step_before_the_run(
    backend: ClassicAgentsBackend, emulator: Emulator, progress: Progress
) -> None:
    emulator.state.faults.push("POST /files", 503, retry_after=None, times=5)
    info = await files_of(backend).upload("later.csv", b"x\n1\n")  # deferred: Azure was unavailable
    process_next_upload(emulator.state, "error", details="Unsupported file.")
    mark = emulator.state.mark()

    with pytest.raises(InvalidInputError, match="Azure could not process 'later.csv': Unsupported file."):
        await backend.run(code("print(1)", info.file_id), progress)

    assert emulator.state.count("POST /threads/{thread_id}/messages", since=mark) == 0
    assert emulator.state.count("POST /threads/{thread_id}/runs", since=mark) == 0


async def test_processing_past_the_deadline_is_a_transient_error_and_the_next_try_waits_for_the_same_upload(
    backend: ClassicAgentsBackend, emulator: Emulator, sleeps: Sleeps, progress: Progress
) -> None:
    process_next_upload(emulator.state, *(["pending"] * 80), "processed")
    mark = emulator.state.mark()

    info = await files_of(backend).upload("big.csv", b"v\n7\n")  # the wait ends at its deadline; the upload is kept

    assert 119 < sum(sleeps.calls) <= 120  # measured on the injected clock, no real waiting
    polls = emulator.state.count(GET_FILE, since=mark)
    assert 60 < polls < 80
    still = r"had not finished processing 'big.csv' after \d+ s \(status 'pending'\)"
    with pytest.raises(BackendUnavailableError, match=still):
        await backend.run(code("print(1)", info.file_id, timeout=5), progress)
    assert emulator.state.count("POST /files", since=mark) == 1

    result = await backend.run(code("print(open('/mnt/data/big.csv').read())", info.file_id), progress)

    assert "v\n7" in _stdout(result)
    assert emulator.state.count("POST /files", since=mark) == 1  # waited for the first upload, not a second copy


async def test_an_upload_deleted_on_azure_while_still_processing_is_uploaded_anew(
    backend: ClassicAgentsBackend, emulator: Emulator, progress: Progress
) -> None:
    process_next_upload(emulator.state, "pending")
    info = await files_of(backend).upload("gone.csv", b"g\n5\n")  # still pending when the wait ends
    for remote_id in [f.id for f in emulator.state.files.values() if f.filename == "gone.csv"]:
        del emulator.state.files[remote_id]
    mark = emulator.state.mark()

    result = await backend.run(code("print(open('/mnt/data/gone.csv').read())", info.file_id), progress)

    assert "g\n5" in _stdout(result)
    assert emulator.state.count("POST /files", since=mark) == 1


async def test_the_upload_tool_tells_the_model_why_azure_could_not_process_the_file(
    emulator: Emulator, tmp_path: Path, sleeps: Sleeps
) -> None:
    settings = Settings(backend="azure-classic", azure_endpoint=emulator.endpoint, data_dir=tmp_path / "data")
    store = FileStore(settings.data_dir)
    backend = ClassicAgentsBackend(
        settings,
        store,
        credential=emulator.credential(),
        client_options={"connection_verify": emulator.ca_file},
        sleep=sleeps,
        clock=sleeps.clock,
    )
    process_next_upload(emulator.state, "pending", "error", details="Unsupported file format.")
    try:
        async with Client(create_server(backend, store, settings)) as client:
            payload = base64.b64encode(b"PK\x03\x04broken").decode()
            result = await client.call_tool("upload_file", {"content_base64": payload, "filename": "sheet.xlsx"})
    finally:
        store.close()

    assert result.is_error
    text = " ".join(c.text for c in result.content if isinstance(c, TextContent))
    assert "Azure could not process 'sheet.xlsx': Unsupported file format." in text
    assert "Uploaded" not in text
