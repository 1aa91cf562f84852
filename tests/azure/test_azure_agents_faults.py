"""The azure backend when Azure misbehaves: throttling, failures, expired containers, cancellation, auth."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import anyio
import pytest
from azure.core.exceptions import ClientAuthenticationError

from ci_mcp.backends.azure.agents.backend import EXPIRED_NOTICE, AzureAgentsBackend, SessionState
from ci_mcp.backends.azure.errors import AzureAuthError
from ci_mcp.errors import BackendUnavailableError, RunFailedError
from ci_mcp.models import RunRequest
from ci_mcp.settings import Settings
from ci_mcp.store import FileStore
from tests.azure.conftest import RESPONSES, ProgressLog
from tests.azure_emulator.credential import EmulatorCredential
from tests.azure_emulator.server import Emulator
from tests.conftest import files_of, stdout_of

pytestmark = pytest.mark.anyio

CONTENT = "GET /openai/v1/containers/{container_id}/files/{file_id}/content"
CANCEL = "POST /openai/v1/responses/{response_id}/cancel"
SLOW_CODE = "import time\nfor _ in range(600):\n    time.sleep(0.05)\n"


async def test_a_429_with_retry_after_is_retried_after_the_requested_wait(
    backend: AzureAgentsBackend, emu: Emulator
) -> None:
    emu.state.faults.push(RESPONSES, status=429, retry_after=0.25, times=2)
    mark = emu.state.mark()

    result = await backend.run(RunRequest(None, "print('through')", None), ProgressLog())

    assert "through" in stdout_of(result)
    attempts = [r for r in emu.state.requests_since(mark) if r.route == RESPONSES]
    assert len(attempts) == 3
    assert attempts[1].at - attempts[0].at >= 0.25 and attempts[2].at - attempts[1].at >= 0.25


async def test_throttling_that_persists_becomes_a_transient_error_with_retry_after(
    backend: AzureAgentsBackend, emu: Emulator
) -> None:
    emu.state.faults.push(RESPONSES, status=429, retry_after=0.05, times=10)

    with pytest.raises(BackendUnavailableError) as caught:
        await backend.run(RunRequest(None, "print(1)", None), ProgressLog())

    assert caught.value.transient and caught.value.retry_after == pytest.approx(0.05)
    assert "429" in str(caught.value) and "Rate limit" in str(caught.value)


async def test_a_retry_after_longer_than_the_bound_is_returned_at_once_instead_of_waited(
    backend: AzureAgentsBackend, emu: Emulator
) -> None:
    emu.state.faults.push(RESPONSES, status=503, retry_after=120, times=1)
    mark = emu.state.mark()

    with anyio.fail_after(5), pytest.raises(BackendUnavailableError) as caught:
        await backend.run(RunRequest(None, "print(1)", None), ProgressLog())

    assert caught.value.retry_after == pytest.approx(120)
    assert [r.route for r in emu.state.requests_since(mark)].count(RESPONSES) == 1


async def test_a_failed_response_is_a_run_failed_error_carrying_the_service_message(
    backend: AzureAgentsBackend, emu: Emulator
) -> None:
    emu.state.faults.fail_next_run("server_error", "Sorry, something went wrong.")

    with pytest.raises(RunFailedError, match="server_error: Sorry, something went wrong"):
        await backend.run(RunRequest(None, "print(1)", None), ProgressLog())


async def test_a_response_failed_for_quota_is_transient(backend: AzureAgentsBackend, emu: Emulator) -> None:
    emu.state.faults.fail_next_run("rate_limit_exceeded", "Rate limit is exceeded. Try again in 7 seconds.")

    with pytest.raises(BackendUnavailableError) as caught:
        await backend.run(RunRequest(None, "print(1)", None), ProgressLog())

    assert caught.value.retry_after == 7


async def test_a_download_that_fails_once_is_retried(backend: AzureAgentsBackend, emu: Emulator) -> None:
    emu.state.faults.push(CONTENT, status=500, retry_after=None, times=1)

    result = await backend.run(RunRequest(None, "open('/mnt/data/a.txt','w').write('hi')", None), ProgressLog())

    assert [f.name for f in result.generated_files] == ["a.txt"] and not result.notices


async def test_a_file_that_cannot_be_downloaded_becomes_a_notice_not_a_failed_run(
    backend: AzureAgentsBackend, emu: Emulator
) -> None:
    emu.state.faults.push(CONTENT, status=500, retry_after=None, times=10)

    result = await backend.run(RunRequest(None, "open('/mnt/data/a.txt','w').write('hi')", None), ProgressLog())

    assert result.status == "ok" and result.generated_files == ()
    assert (
        len(result.notices) == 1 and "'a.txt'" in result.notices[0] and "could not be downloaded" in result.notices[0]
    )


async def test_an_expired_container_is_replaced_once_with_a_notice_that_state_was_lost(
    backend: AzureAgentsBackend, emu: Emulator
) -> None:
    info = await files_of(backend).upload("keep.csv", b"a\n1\n")
    first = await backend.run(RunRequest(None, "x = 1", None, (info.file_id,)), ProgressLog())
    old_conversation = backend.records.get(first.session_id, SessionState).state.conversation_id
    emu.state.expire_container(str(backend.records.get(first.session_id, SessionState).state.container_id))

    second = await backend.run(
        RunRequest(first.session_id, "import os\nprint('x' in globals(), os.listdir('/mnt/data'))", None),
        ProgressLog(),
    )

    assert second.status == "ok" and second.notices == (EXPIRED_NOTICE,)
    assert "False ['keep.csv']" in stdout_of(second)
    assert backend.records.get(first.session_id, SessionState).state.conversation_id != old_conversation
    third = await backend.run(RunRequest(first.session_id, "y = 2", None), ProgressLog())
    assert third.notices == ()


async def test_cancelling_a_streamed_run_closes_the_stream_which_stops_it_and_interrupts_the_code(
    backend: AzureAgentsBackend, emu: Emulator
) -> None:
    running = anyio.Event()
    seen: list[str] = []

    async def progress(value: float, total: float | None, message: str) -> None:
        seen.append(message)
        if message == "running code":
            running.set()

    first = await backend.run(RunRequest(None, "print('warm')", None), ProgressLog())
    mark = emu.state.mark()
    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            tg.start_soon(backend.run, RunRequest(first.session_id, SLOW_CODE, None), progress)
            await running.wait()
            tg.cancel_scope.cancel()

    with anyio.fail_after(15):  # the kernel was interrupted: the session answers long before SLOW_CODE would end
        after = await backend.run(RunRequest(first.session_id, "print('alive')", None), ProgressLog())
    assert "alive" in stdout_of(after)
    routes = [r.route for r in emu.state.requests_since(mark)]
    assert CANCEL not in routes  # the service answers 400 to cancelling a response that is not in the background
    slow = next(r for r in emu.state.responses.values() if SLOW_CODE in str(r.body.get("input")))
    assert slow.status == "cancelled"


async def test_a_run_over_its_time_limit_closes_its_stream_and_is_reported_as_timeout(
    backend: AzureAgentsBackend, emu: Emulator
) -> None:
    mark = emu.state.mark()
    code = SLOW_CODE + "# time limit\n"

    result = await backend.run(RunRequest(None, code, None, timeout_seconds=1.5), ProgressLog())

    assert result.status == "timeout" and "time limit of 2 s" in result.notices[-1]
    assert CANCEL not in [r.route for r in emu.state.requests_since(mark)]
    with anyio.fail_after(15):  # the stream's close stopped the code: the same session answers at once
        after = await backend.run(RunRequest(result.session_id, "print('next')", None), ProgressLog())
    assert "next" in stdout_of(after)
    timed_out = next(r for r in emu.state.responses.values() if code in str(r.body.get("input")))
    assert timed_out.status == "cancelled"


async def test_a_credential_that_cannot_sign_in_is_explained_without_secrets(
    make_backend: Callable[..., Awaitable[AzureAgentsBackend]],
) -> None:
    failing = EmulatorCredential(
        fail_with=ClientAuthenticationError("DefaultAzureCredential failed to retrieve a token")
    )
    backend = await make_backend(credential=failing)

    with pytest.raises(AzureAuthError) as caught:
        await files_of(backend).upload("a.csv", b"a\n1\n")

    message = str(caught.value)
    assert "az login" in message and "AZURE_CLIENT_ID" in message and "managed identity" in message


async def test_a_token_azure_rejects_is_an_auth_error_that_does_not_echo_the_token(
    make_backend: Callable[..., Awaitable[AzureAgentsBackend]],
) -> None:
    backend = await make_backend(credential=EmulatorCredential(token="secret-token-value"))

    with pytest.raises(AzureAuthError) as caught:
        await backend.run(RunRequest(None, "print(1)", None), ProgressLog())

    assert "secret-token-value" not in str(caught.value) and "az login" in str(caught.value)


@pytest.mark.parametrize("max_retries", [0, 2])
async def test_the_max_retries_setting_is_how_often_a_throttled_response_is_sent_again(
    emu: Emulator, azure_settings: Callable[..., Settings], max_retries: int
) -> None:
    settings = azure_settings(azure_max_retries=max_retries)
    store = FileStore(settings.data_dir)
    backend = AzureAgentsBackend(settings, store, credential=emu.credential(), ca_file=emu.ca_file)
    emu.state.faults.push(RESPONSES, status=429, retry_after=0, times=5)
    mark = emu.state.mark()
    try:
        with pytest.raises(BackendUnavailableError, match=r"429"):
            await backend.run(RunRequest(None, "print(1)", None), ProgressLog())
    finally:
        await backend.aclose()
        store.close()

    assert emu.state.count(RESPONSES, since=mark) == max_retries + 1
