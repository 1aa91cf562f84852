"""The conversation's code-interpreter container across calls: files named in a later call reach the container that
already exists, and a container the service replaced is noticed (its Python state is gone)."""

from __future__ import annotations

import base64

import pytest
from mcp import Client

from ci_mcp.backends.azure.agents.backend import EXPIRED_NOTICE, REPLACED_NOTICE, AzureAgentsBackend, SessionState
from ci_mcp.models import RunRequest
from tests.azure.conftest import RESPONSES, ProgressLog
from tests.azure_emulator.server import Emulator
from tests.conftest import all_text, files_of, session_of, stdout_of, uploaded_id

pytestmark = pytest.mark.anyio

ADD = "POST /openai/v1/containers/{container_id}/files"
LIST = "GET /openai/v1/containers/{container_id}/files"
READ_BOTH = "read = lambda n: open('/mnt/data/' + n).read().split()\nprint(kept, read('first.csv'), read('later.csv'))"


async def upload(mcp: Client, name: str, data: bytes) -> str:
    return uploaded_id(
        await mcp.call_tool("upload_file", {"content_base64": base64.b64encode(data).decode(), "filename": name})
    )


async def test_a_file_named_in_a_later_call_is_added_to_the_existing_container_and_checked_by_listing(
    mcp: Client, emu: Emulator
) -> None:
    first_file = await upload(mcp, "first.csv", b"a\n1\n")
    first = await mcp.call_tool("run_code_analysis", {"code": "kept = 7", "file_ids": [first_file]})
    assert not first.is_error, all_text(first)
    later_file = await upload(mcp, "later.csv", b"b\n2\n")
    mark = emu.state.mark()

    second = await mcp.call_tool(
        "run_code_analysis",
        {
            "code": READ_BOTH,
            "file_ids": [later_file],
            "session_id": session_of(first),
        },
    )

    assert not second.is_error, all_text(second)
    assert "7 ['a', '1'] ['b', '2']" in all_text(second)
    routes = [r.route for r in emu.state.requests_since(mark)]
    assert routes.count(ADD) == 1 and routes.index(ADD) < routes.index(LIST) < routes.index(RESPONSES)


async def test_a_file_named_later_for_an_expired_container_comes_with_every_session_file_in_a_new_one(
    backend: AzureAgentsBackend, emu: Emulator
) -> None:
    a = await files_of(backend).upload("a.csv", b"a\n1\n")
    first = await backend.run(RunRequest(None, "x = 1", None, (a.file_id,)), ProgressLog())
    emu.state.expire_container(str(backend.records.get(first.session_id, SessionState).state.container_id))
    b = await files_of(backend).upload("b.csv", b"b\n2\n")

    second = await backend.run(
        RunRequest(first.session_id, "import os\nprint(sorted(os.listdir('/mnt/data')))", None, (b.file_id,)),
        ProgressLog(),
    )

    assert second.status == "ok" and second.notices == (EXPIRED_NOTICE,)
    assert "['a.csv', 'b.csv']" in stdout_of(second)


async def test_a_container_the_service_replaced_silently_is_noticed_and_the_model_told_state_was_lost(
    mcp: Client, backend: AzureAgentsBackend, emu: Emulator
) -> None:
    data = await upload(mcp, "data.csv", b"a\n1\n")
    first = await mcp.call_tool("run_code_analysis", {"code": "x = 1", "file_ids": [data]})
    session = session_of(first)
    emu.state.replace_container_silently(str(backend.records.get(session, SessionState).state.conversation_id))

    second = await mcp.call_tool(
        "run_code_analysis",
        {"code": "import os\nprint('x' in globals(), os.listdir('/mnt/data'))", "session_id": session},
    )

    text = all_text(second)
    assert not second.is_error, text
    assert "False ['data.csv']" in text
    assert REPLACED_NOTICE in text
    third = await mcp.call_tool("run_code_analysis", {"code": "y = 2", "session_id": session})
    assert REPLACED_NOTICE not in all_text(third)


async def test_a_file_named_later_when_the_container_was_deleted_reaches_the_new_container(
    backend: AzureAgentsBackend, emu: Emulator
) -> None:
    a = await files_of(backend).upload("a.csv", b"a\n1\n")
    first = await backend.run(RunRequest(None, "x = 1", None, (a.file_id,)), ProgressLog())
    state = backend.records.get(first.session_id, SessionState).state
    emu.state.replace_container_silently(str(state.conversation_id))
    emu.call_soon(emu.state.release_kernels())
    emu.state.containers.pop(str(state.container_id))  # deleted: adding a file to it answers 404
    b = await files_of(backend).upload("b.csv", b"b\n2\n")

    second = await backend.run(
        RunRequest(first.session_id, "import os\nprint(sorted(os.listdir('/mnt/data')))", None, (b.file_id,)),
        ProgressLog(),
    )

    assert second.status == "ok" and second.notices == (REPLACED_NOTICE,)
    assert "['a.csv', 'b.csv']" in stdout_of(second)


async def test_a_file_the_container_accepts_but_does_not_list_is_an_error_that_says_to_start_anew(
    mcp: Client, emu: Emulator
) -> None:
    first = await mcp.call_tool("run_code_analysis", {"code": "x = 1"})
    later_file = await upload(mcp, "later.csv", b"b\n2\n")
    ghost = {"id": "cfile_ghost", "object": "container.file", "path": "/mnt/data/later.csv", "source": "user"}
    emu.state.faults.push(ADD, status=200, retry_after=None, body=ghost)  # answered, but nothing was added
    mark = emu.state.mark()

    second = await mcp.call_tool(
        "run_code_analysis", {"code": "print(1)", "file_ids": [later_file], "session_id": session_of(first)}
    )

    text = all_text(second)
    assert second.is_error and "'later.csv'" in text and "does not list it" in text and "new session" in text
    assert emu.state.count(RESPONSES, since=mark) == 0
