"""Errors the service reports inside a streamed response: nested `error` events (`{"type":"error","error":{...}}`),
for which the openai SDK raises a bare `APIError` without an HTTP status. They are translated by the body's code and
message, so a rate limit is retried and an expired container is recovered, as for their HTTP forms."""

from __future__ import annotations

import pytest
from mcp import Client

from ci_mcp.backends.azure.agents.backend import EXPIRED_NOTICE, AzureAgentsBackend, SessionState
from ci_mcp.errors import BackendUnavailableError, RunFailedError
from ci_mcp.models import RunRequest
from tests.azure.conftest import RESPONSES, ProgressLog
from tests.azure_emulator.server import Emulator
from tests.conftest import all_text, files_of, stdout_of

pytestmark = pytest.mark.anyio


async def test_a_rate_limit_error_event_before_any_output_is_retried_after_the_wait_it_names(
    mcp: Client, emu: Emulator
) -> None:
    emu.state.faults.error_in_stream("rate_limit_exceeded", "Rate limit is exceeded. Try again in 1 seconds.")
    mark = emu.state.mark()

    result = await mcp.call_tool("run_code_analysis", {"code": "print('through the limit')"})

    assert not result.is_error, all_text(result)
    assert "through the limit" in all_text(result)
    attempts = [r for r in emu.state.requests_since(mark) if r.route == RESPONSES]
    assert len(attempts) == 2 and attempts[1].at - attempts[0].at >= 1.0


async def test_a_rate_limit_error_event_naming_a_long_wait_is_a_transient_tool_error_at_once(
    mcp: Client, emu: Emulator
) -> None:
    emu.state.faults.error_in_stream("rate_limit_exceeded", "Rate limit is exceeded. Try again in 60 seconds.")
    mark = emu.state.mark()

    result = await mcp.call_tool("run_code_analysis", {"code": "print(1)"})

    text = all_text(result)
    assert result.is_error and "rate_limit_exceeded" in text and "Try again in 60 seconds" in text
    assert "temporary: try again in 60 s" in text and "Unexpected failure" not in text
    assert emu.state.count(RESPONSES, since=mark) == 1


async def test_a_rate_limit_error_event_after_output_is_not_sent_again_and_says_the_code_may_have_run(
    backend: AzureAgentsBackend, emu: Emulator
) -> None:
    emu.state.faults.error_in_stream(
        "rate_limit_exceeded", "Rate limit is exceeded. Try again in 1 seconds.", after_output=True
    )
    mark = emu.state.mark()

    with pytest.raises(BackendUnavailableError) as caught:
        await backend.run(RunRequest(None, "print('ran once')", None), ProgressLog())

    assert caught.value.retry_after == 1 and "may have run" in str(caught.value)
    assert emu.state.count(RESPONSES, since=mark) == 1


async def test_an_expired_container_error_event_mid_stream_starts_a_new_container_with_a_notice(
    backend: AzureAgentsBackend, emu: Emulator
) -> None:
    info = await files_of(backend).upload("keep.csv", b"a\n1\n")
    first = await backend.run(RunRequest(None, "x = 1", None, (info.file_id,)), ProgressLog())
    old_conversation = backend.records.get(first.session_id, SessionState).state.conversation_id
    emu.state.faults.error_in_stream(None, "Container is expired.")

    second = await backend.run(
        RunRequest(first.session_id, "import os\nprint('x' in globals(), os.listdir('/mnt/data'))", None),
        ProgressLog(),
    )

    assert second.status == "ok" and second.notices == (EXPIRED_NOTICE,)
    assert "False ['keep.csv']" in stdout_of(second)
    assert backend.records.get(first.session_id, SessionState).state.conversation_id != old_conversation


async def test_a_server_error_event_is_a_run_failure_carrying_the_service_message(
    backend: AzureAgentsBackend, emu: Emulator
) -> None:
    emu.state.faults.error_in_stream("server_error", "Sorry, something went wrong.", after_output=True)

    with pytest.raises(RunFailedError, match="server_error: Sorry, something went wrong"):
        await backend.run(RunRequest(None, "print(1)", None), ProgressLog())
