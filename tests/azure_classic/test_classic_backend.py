"""The azure-classic backend over the emulator, with the real azure-ai-agents SDK on the wire."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import anyio
import anyio.to_thread
import pytest
from PIL import Image

from ci_mcp.backends.azure.classic.backend import ClassicAgentsBackend
from ci_mcp.errors import BackendUnavailableError, NotFoundError, RunFailedError
from ci_mcp.models import ImageOutput, RunRequest, RunResult, TextOutput
from tests.azure_classic.conftest import Progress, Sleeps, code
from tests.azure_emulator.classic_routes import require_action_next_run
from tests.azure_emulator.server import Emulator
from tests.conftest import files_of, stdout_of

pytestmark = pytest.mark.anyio

PNG_CODE = """
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
from IPython.display import Image, display
fig, ax = plt.subplots()
ax.bar(["a", "b"], [3, 5])
fig.savefig("/mnt/data/bars.png")
display(Image(filename="/mnt/data/bars.png"))
print("saved")
"""


def answer_of(result: RunResult) -> str:
    return "\n".join(o.text for o in result.outputs if isinstance(o, TextOutput) and o.kind == "answer")


def images_of(result: RunResult) -> list[ImageOutput]:
    return [o for o in result.outputs if isinstance(o, ImageOutput)]


async def test_upload_keeps_a_local_copy_and_sends_the_file_to_azure_for_agents(
    backend: ClassicAgentsBackend, emulator: Emulator
) -> None:
    info = await files_of(backend).upload("data.csv", b"a,b\n1,2\n")

    assert info.origin == "upload" and info.media_type == "text/csv"
    assert (await files_of(backend).path(info.file_id)).read_bytes() == b"a,b\n1,2\n"
    remote = [f for f in emulator.state.files.values() if f.data == b"a,b\n1,2\n"]
    assert [(f.filename, f.purpose) for f in remote] == [("data.csv", "assistants")]


async def test_run_returns_stdout_a_real_png_and_the_file_path_file_fetchable_by_id(
    backend: ClassicAgentsBackend, progress: Progress
) -> None:
    result = await backend.run(code(PNG_CODE), progress)

    assert result.status == "ok"
    assert "saved" in stdout_of(result)
    pictures = images_of(result)
    assert pictures, result.outputs
    with Image.open(io.BytesIO(pictures[0].data)) as img:
        assert img.format == "PNG" and img.width > 100
    by_name = {f.name: f for f in result.generated_files}
    assert "bars.png" in by_name
    bars = by_name["bars.png"]
    assert (await files_of(backend).path(bars.file_id)).read_bytes().startswith(b"\x89PNG")
    assert (await files_of(backend).info(bars.file_id)).session_id == result.session_id
    assert f"ci-mcp://files/{bars.file_id}" in answer_of(result)
    assert "sandbox:" not in answer_of(result)


async def test_run_reports_progress_from_run_and_step_events_without_polling(
    backend: ClassicAgentsBackend, emulator: Emulator, progress: Progress
) -> None:
    mark = emulator.state.mark()
    await backend.run(code("print(1)"), progress)

    assert "Azure run queued" in progress.messages
    assert "Code Interpreter is running the code" in progress.messages
    assert progress.messages[-1] == "Azure run completed"
    routes = [r.route for r in emulator.state.requests_since(mark)]
    assert routes.count("POST /threads/{thread_id}/runs") == 1
    assert "GET /threads/{thread_id}/runs/{run_id}" not in routes


async def test_session_is_a_thread_whose_variables_and_files_persist_between_runs(
    backend: ClassicAgentsBackend, emulator: Emulator, progress: Progress
) -> None:
    upload = await files_of(backend).upload("numbers.csv", b"n\n1\n2\n3\n")
    first = await backend.run(
        code("import pandas as pd\nx = 41\ndf = pd.read_csv('/mnt/data/numbers.csv')", upload.file_id), progress
    )
    second = await backend.run(code("print(x + 1, int(df.n.sum()))", session_id=first.session_id), progress)

    assert second.session_id == first.session_id
    assert "42 6" in stdout_of(second)
    threads = {run["thread_id"] for run in emulator.state.runs.values() if run["id"] in _run_ids(emulator, 2)}
    assert len(threads) == 1
    assert [s.session_id for s in await backend.sessions()] == [first.session_id]


def _run_ids(emulator: Emulator, last: int) -> set[str]:
    return {r["id"] for r in list(emulator.state.runs.values())[-last:]}


async def test_files_are_attached_to_the_message_for_the_code_interpreter_and_uploaded_once(
    backend: ClassicAgentsBackend, emulator: Emulator, progress: Progress
) -> None:
    upload = await files_of(backend).upload("t.txt", b"hello")
    mark = emulator.state.mark()
    first = await backend.run(code("print(open('/mnt/data/t.txt').read())", upload.file_id), progress)
    await backend.run(code("print(2)", upload.file_id, session_id=first.session_id), progress)

    assert "hello" in stdout_of(first)
    assert emulator.state.count("POST /files", since=mark) == 0
    thread_id = emulator.state.runs[max(_run_ids(emulator, 1))]["thread_id"]
    user_messages = [m for m in emulator.state.messages[thread_id] if m["role"] == "user"]
    attachment = user_messages[0]["attachments"][0]
    assert attachment["tools"] == [{"type": "code_interpreter"}]
    assert emulator.state.files[attachment["file_id"]].filename == "t.txt"


async def test_code_is_sent_as_an_instruction_to_run_it_exactly(
    backend: ClassicAgentsBackend, emulator: Emulator, progress: Progress
) -> None:
    await backend.run(code("print('exact')"), progress)

    message, _ = emulator.state.model_calls[-1]
    assert "Run exactly the following Python code" in message
    assert "```python\nprint('exact')\n```" in message


async def test_one_agent_is_found_by_name_and_reused_across_backends(
    make_backend: Callable[..., ClassicAgentsBackend], emulator: Emulator, progress: Progress
) -> None:
    name = "ci-mcp-reuse-test"
    for _ in range(2):
        b = make_backend(azure_agent_name=name)
        await b.run(code("print(1)"), progress)
        await b.run(code("print(2)"), progress)
        await b.aclose()

    agents = [a for a in emulator.state.assistants.values() if a["name"] == name]
    assert len(agents) == 1
    assert agents[0]["tools"] == [{"type": "code_interpreter"}]
    assert agents[0]["model"] == "gpt-4o"


async def test_429_with_retry_after_is_retried_after_the_wait_the_service_asked_for(
    backend: ClassicAgentsBackend, emulator: Emulator, sleeps: Sleeps, progress: Progress
) -> None:
    emulator.state.faults.push("POST /threads/{thread_id}/runs", 429, retry_after=2.5)
    mark = emulator.state.mark()

    result = await backend.run(code("print('after retry')"), progress)

    assert "after retry" in stdout_of(result)
    assert sleeps.calls == [2.5]
    assert emulator.state.count("POST /threads/{thread_id}/runs", since=mark) == 2


async def test_a_retry_after_longer_than_we_wait_is_a_transient_error_carrying_it(
    backend: ClassicAgentsBackend, emulator: Emulator, sleeps: Sleeps, progress: Progress
) -> None:
    emulator.state.faults.push("POST /threads", 429, retry_after=90)

    with pytest.raises(BackendUnavailableError) as caught:
        await backend.run(code("print(1)"), progress)

    assert caught.value.retry_after == 90
    assert "Try again in 90 s" in str(caught.value)
    assert sleeps.calls == []


@pytest.mark.parametrize("max_retries", [0, 2])
async def test_the_max_retries_setting_is_how_often_a_rate_limited_request_is_sent_again(
    make_backend: Callable[..., ClassicAgentsBackend],
    emulator: Emulator,
    sleeps: Sleeps,
    progress: Progress,
    max_retries: int,
) -> None:
    backend = make_backend(azure_max_retries=max_retries)
    emulator.state.faults.push("POST /threads", 429, retry_after=1, times=5)
    mark = emulator.state.mark()

    with pytest.raises(BackendUnavailableError, match=r"Azure is busy or failing \(429\)"):
        await backend.run(code("print(1)"), progress)
    await backend.aclose()

    assert emulator.state.count("POST /threads", since=mark) == max_retries + 1
    assert sleeps.calls == [1.0] * max_retries


async def test_a_retry_after_longer_than_the_max_retry_wait_setting_is_not_waited_out(
    make_backend: Callable[..., ClassicAgentsBackend], emulator: Emulator, sleeps: Sleeps, progress: Progress
) -> None:
    backend = make_backend(azure_max_retry_wait_seconds=2)
    emulator.state.faults.push("GET /assistants", 429, retry_after=3)
    mark = emulator.state.mark()

    with pytest.raises(BackendUnavailableError) as caught:
        await backend.run(code("print(1)"), progress)
    await backend.aclose()

    assert caught.value.retry_after == 3
    assert sleeps.calls == []
    assert emulator.state.count("GET /assistants", since=mark) == 1


async def test_a_failed_run_surfaces_its_last_error_as_a_tool_error(
    backend: ClassicAgentsBackend, emulator: Emulator, progress: Progress
) -> None:
    emulator.state.faults.fail_next_run("invalid_prompt", "The prompt was flagged.")

    with pytest.raises(RunFailedError, match="invalid_prompt: The prompt was flagged."):
        await backend.run(code("print(1)"), progress)


async def test_an_incomplete_run_returns_what_it_produced_with_status_incomplete(
    backend: ClassicAgentsBackend, emulator: Emulator, progress: Progress
) -> None:
    emulator.state.faults.incomplete_next_response("max_completion_tokens")

    result = await backend.run(code("print('partial answer')\nopen('kept.txt', 'w').write('x')"), progress)

    assert result.status == "incomplete"
    assert "partial answer" in " ".join(getattr(o, "text", "") for o in result.outputs)
    assert [f.name for f in result.generated_files] == ["kept.txt"]
    assert any("max_completion_tokens" in n for n in result.notices)


async def test_a_rate_limited_run_is_a_transient_error_with_the_services_wait(
    backend: ClassicAgentsBackend, emulator: Emulator, progress: Progress
) -> None:
    emulator.state.faults.fail_next_run("rate_limit_exceeded", "Rate limit is exceeded. Try again in 7 seconds.")

    with pytest.raises(BackendUnavailableError) as caught:
        await backend.run(code("print(1)"), progress)

    assert "Rate limit is exceeded. Try again in 7 seconds." in str(caught.value)
    assert caught.value.retry_after == 7


async def test_a_server_error_run_says_to_send_the_step_again(
    backend: ClassicAgentsBackend, emulator: Emulator, progress: Progress
) -> None:
    emulator.state.faults.fail_next_run("server_error", "Sorry, something went wrong.")

    with pytest.raises(RunFailedError, match="Sorry, something went wrong.*send the same step once more"):
        await backend.run(code("print(1)"), progress)


async def test_a_run_stuck_in_requires_action_is_cancelled_with_a_clear_message(
    backend: ClassicAgentsBackend, emulator: Emulator, progress: Progress
) -> None:
    require_action_next_run(emulator.state, "get_weather")

    with anyio.fail_after(30), pytest.raises(RunFailedError, match=r"client-side tool call \(get_weather\)"):
        await backend.run(code("print(1)"), progress)

    stuck = list(emulator.state.runs.values())[-1]
    assert stuck["status"] == "cancelled"
    session = (await backend.sessions())[-1].session_id
    again = await backend.run(code("print('thread usable')", session_id=session), progress)
    assert "thread usable" in stdout_of(again)


async def test_cancelling_the_call_cancels_the_remote_run(
    backend: ClassicAgentsBackend, emulator: Emulator, progress: Progress
) -> None:
    with anyio.fail_after(30):  # a bound, not a measurement: uncancelled, the run would hold the group for 60 s
        async with anyio.create_task_group() as tg:
            tg.start_soon(backend.run, code("import time\ntime.sleep(60)"), progress)
            assert await anyio.to_thread.run_sync(emulator.state.code_running.wait, 20)
            tg.cancel_scope.cancel()

    last = list(emulator.state.runs.values())[-1]
    assert last["status"] == "cancelled"


async def test_a_run_past_its_deadline_is_cancelled_and_returns_status_timeout(
    backend: ClassicAgentsBackend, emulator: Emulator, progress: Progress
) -> None:
    with anyio.fail_after(30):
        result = await backend.run(code("import time\ntime.sleep(60)", timeout=2), progress)

    assert result.status == "timeout"
    assert "did not finish within its 2 s limit and was cancelled" in result.notices[0]
    assert list(emulator.state.runs.values())[-1]["status"] == "cancelled"


async def test_upload_while_azure_is_unavailable_keeps_the_file_and_uploads_it_at_run_time(
    backend: ClassicAgentsBackend, emulator: Emulator, sleeps: Sleeps, progress: Progress
) -> None:
    emulator.state.faults.push("POST /files", 503, retry_after=None, times=5)
    info = await files_of(backend).upload("late.txt", b"late bytes")
    assert sleeps.calls == [0.5, 1.0, 2.0, 4.0]

    result = await backend.run(code("print(open('/mnt/data/late.txt').read())", info.file_id), progress)

    assert "late bytes" in stdout_of(result)


async def test_unknown_file_ids_fail_before_anything_is_created_on_azure(
    backend: ClassicAgentsBackend, emulator: Emulator, progress: Progress
) -> None:
    mark = emulator.state.mark()
    with pytest.raises(NotFoundError, match="No file with id 'file-000000000000000000000000'"):
        await backend.run(code("print(1)", "file-000000000000000000000000"), progress)
    assert emulator.state.requests_since(mark) == []


async def test_fetching_an_azure_file_id_explains_that_inputs_cannot_be_read_back(
    backend: ClassicAgentsBackend, emulator: Emulator
) -> None:
    with pytest.raises(NotFoundError, match="does not give back files uploaded to agents") as caught:
        await files_of(backend).info("assistant-abc123")
    assert "list_files" in str(caught.value)


async def test_an_azure_id_of_a_downloaded_file_resolves_to_the_local_copy(
    backend: ClassicAgentsBackend, emulator: Emulator, progress: Progress
) -> None:
    result = await backend.run(code(PNG_CODE), progress)
    bars = next(f for f in result.generated_files if f.name == "bars.png")
    remote_id = [f.id for f in emulator.state.files.values() if f.filename == "/mnt/data/bars.png"][-1]

    assert (await files_of(backend).info(remote_id)).file_id == bars.file_id


async def test_the_emulator_refuses_to_give_back_an_uploaded_input_as_azure_does(
    backend: ClassicAgentsBackend, emulator: Emulator
) -> None:
    from azure.core.exceptions import HttpResponseError

    await files_of(backend).upload("secret.csv", b"x\n1\n")
    remote_id = next(f.id for f in emulator.state.files.values() if f.filename == "secret.csv")
    client = backend._require_client()

    with pytest.raises(HttpResponseError, match="Not allowed to download files of purpose: assistants"):
        b"".join([chunk async for chunk in await client.files.get_content(remote_id)])


async def test_closing_a_session_deletes_the_thread_and_keeps_its_files(
    backend: ClassicAgentsBackend, emulator: Emulator, progress: Progress
) -> None:
    result = await backend.run(code(PNG_CODE), progress)
    thread_id = list(emulator.state.runs.values())[-1]["thread_id"]

    await backend.close_session(result.session_id)

    assert thread_id not in emulator.state.threads
    assert (await files_of(backend).path(result.generated_files[0].file_id)).exists()
    with pytest.raises(NotFoundError, match="was closed"):
        await backend.run(code("print(1)", session_id=result.session_id), progress)


async def test_a_request_without_code_or_words_is_refused(backend: ClassicAgentsBackend, progress: Progress) -> None:
    from ci_mcp.errors import InvalidInputError

    with pytest.raises(InvalidInputError, match="Pass `request`"):
        await backend.run(RunRequest(session_id=None, code=None, request="  "), progress)


async def test_an_agent_deleted_on_azure_is_created_again_on_the_next_run(
    backend: ClassicAgentsBackend, emulator: Emulator, progress: Progress
) -> None:
    await backend.run(code("print(1)"), progress)
    for agent_id in [a["id"] for a in emulator.state.assistants.values() if a["name"] == "ci-mcp-code-interpreter"]:
        del emulator.state.assistants[agent_id]

    result = await backend.run(code("print('recreated')"), progress)

    assert "recreated" in stdout_of(result)
    assert [a["name"] for a in emulator.state.assistants.values()].count("ci-mcp-code-interpreter") == 1


async def test_a_restarted_server_does_not_upload_a_known_file_again(
    make_backend: Callable[..., ClassicAgentsBackend], emulator: Emulator, tmp_path: Path, progress: Progress
) -> None:
    first = make_backend(data_dir=tmp_path / "kept")
    info = await files_of(first).upload("kept.txt", b"kept")
    await first.aclose()
    mark = emulator.state.mark()

    second = make_backend(data_dir=tmp_path / "kept")
    result = await second.run(code("print(open('/mnt/data/kept.txt').read())", info.file_id), progress)
    await second.aclose()

    assert "kept" in stdout_of(result)
    assert emulator.state.count("POST /files", since=mark) == 0


async def test_doctor_reaches_the_classic_api_with_the_credential(
    make_backend: Callable[..., ClassicAgentsBackend], emulator: Emulator, tmp_path: Path
) -> None:
    from ci_mcp.backends.azure.classic.doctor import diagnose
    from ci_mcp.settings import Settings

    settings = Settings(backend="azure-classic", azure_endpoint=emulator.endpoint, data_dir=tmp_path)
    checks = await diagnose(
        settings, credential=emulator.credential(), client_options={"connection_verify": emulator.ca_file}
    )

    by_name = {name: (ok, message) for name, ok, message in checks}
    assert by_name["credential"][0], by_name["credential"]
    assert by_name["classic agents API"][0], by_name["classic agents API"]
    assert "reachable; agent 'ci-mcp-code-interpreter'" in by_name["classic agents API"][1]


@pytest.mark.parametrize(("deployment", "model"), [("gpt-4o", "gpt-4o"), ("analysis-4.1", "gpt-4.1")])
async def test_doctor_looks_the_model_deployment_up_in_the_project(
    emulator: Emulator, tmp_path: Path, deployment: str, model: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ci_mcp.backends.azure.classic.doctor import diagnose
    from ci_mcp.settings import Settings

    monkeypatch.setitem(emulator.state.deployments, deployment, model)
    settings = Settings(
        backend="azure-classic", azure_endpoint=emulator.endpoint, azure_model=deployment, data_dir=tmp_path
    )
    mark = emulator.state.mark()

    checks = await diagnose(
        settings, credential=emulator.credential(), client_options={"connection_verify": emulator.ca_file}
    )

    by_name = {name: (ok, message) for name, ok, message in checks}
    assert by_name["model deployment"] == (True, f"'{deployment}' is deployed in the project ({model} 2025-04-14)")
    lookups = [r.path for r in emulator.state.requests_since(mark) if r.route == "GET /deployments/{name}"]
    assert lookups == [f"/deployments/{deployment}"]


async def test_doctor_fails_a_model_deployment_the_project_does_not_have(emulator: Emulator, tmp_path: Path) -> None:
    from ci_mcp.backends.azure.classic.doctor import diagnose
    from ci_mcp.settings import Settings

    settings = Settings(
        backend="azure-classic", azure_endpoint=emulator.endpoint, azure_model="not-deployed", data_dir=tmp_path
    )

    checks = await diagnose(
        settings, credential=emulator.credential(), client_options={"connection_verify": emulator.ca_file}
    )

    by_name = {name: (ok, message) for name, ok, message in checks}
    ok, message = by_name["model deployment"]
    assert not ok
    assert "no model deployment named 'not-deployed'" in message and "CI_MCP_AZURE_MODEL" in message


async def test_doctor_reports_a_refused_token_without_calling_the_api(emulator: Emulator, tmp_path: Path) -> None:
    from ci_mcp.backends.azure.classic.doctor import diagnose
    from ci_mcp.settings import Settings
    from tests.azure_emulator.credential import EmulatorCredential

    settings = Settings(backend="azure-classic", azure_endpoint=emulator.endpoint, data_dir=tmp_path)
    mark = emulator.state.mark()
    failing = EmulatorCredential(fail_with=RuntimeError("no az login"))

    checks = await diagnose(settings, credential=failing, client_options={"connection_verify": emulator.ca_file})

    by_name = {name: (ok, message) for name, ok, message in checks}
    assert not by_name["credential"][0] and "az login" in by_name["credential"][1]
    assert by_name["classic agents API"] == (False, "skipped: no credential")
    assert by_name["model deployment"] == (False, "not checked: no credential to ask the project with")
    assert emulator.state.requests_since(mark) == []


class _BreakingStream:
    """Stands in for the SDK's async run stream: two events, then the connection drops."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id

    async def __aenter__(self) -> AsyncIterator[tuple[str, object, None]]:
        return self.events()

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def events(self) -> AsyncIterator[tuple[str, object, None]]:
        from azure.core.exceptions import ServiceResponseError

        yield "thread.run.created", {"id": self.run_id, "status": "queued"}, None
        yield "thread.run.in_progress", {"id": self.run_id, "status": "in_progress"}, None
        raise ServiceResponseError("Connection reset by peer")


async def test_a_stream_that_breaks_mid_run_is_a_transient_error_not_a_hang(
    backend: ClassicAgentsBackend, emulator: Emulator, progress: Progress, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = backend._require_client()

    async def breaking_stream(*args: object, **kwargs: object) -> _BreakingStream:
        return _BreakingStream("run_gone")

    monkeypatch.setattr(client.runs, "stream", breaking_stream)

    with anyio.fail_after(30), pytest.raises(BackendUnavailableError, match="stream broke off") as caught:
        await backend.run(code("print(1)"), progress)

    assert "ServiceResponseError" in str(caught.value)
    assert "the run was cancelled" in str(caught.value)


async def test_a_warm_call_costs_a_message_a_run_one_listing_and_one_download_per_file(
    backend: ClassicAgentsBackend, emulator: Emulator, progress: Progress
) -> None:
    first = await backend.run(code("x = 6"), progress)
    mark = emulator.state.mark()

    warm = await backend.run(
        code("open('/mnt/data/out.csv', 'w').write(f'x\\n{x * 7}\\n')", session_id=first.session_id), progress
    )

    assert [f.name for f in warm.generated_files] == ["out.csv"]
    assert (await files_of(backend).path(warm.generated_files[0].file_id)).read_bytes() == b"x\n42\n"
    requests = emulator.state.requests_since(mark)
    assert sorted(r.route for r in requests) == [
        "GET /files/{file_id}/content",
        "GET /threads/{thread_id}/messages",
        "POST /threads/{thread_id}/messages",
        "POST /threads/{thread_id}/runs",
    ]
    listing = next(r for r in requests if r.route == "GET /threads/{thread_id}/messages")
    run_id = list(emulator.state.runs.values())[-1]["id"]
    assert listing.query["run_id"] == run_id
    assert listing.query["order"] == "asc" and int(listing.query["limit"]) >= 1


async def test_a_full_page_of_the_runs_messages_is_followed_by_the_next_page(
    backend: ClassicAgentsBackend, emulator: Emulator, progress: Progress, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ci_mcp.backends.azure.classic import backend as classic

    monkeypatch.setattr(classic, "_MESSAGES_PAGE", 1)  # the run's one answer fills a page
    mark = emulator.state.mark()

    result = await backend.run(code("print('paged')"), progress)

    assert "paged" in answer_of(result)
    listings = [r for r in emulator.state.requests_since(mark) if r.route == "GET /threads/{thread_id}/messages"]
    assert len(listings) == 2
    assert "after" not in listings[0].query and listings[1].query["after"].startswith("msg_")


async def test_a_run_past_its_deadline_whose_cancel_fails_lets_go_of_its_event_stream(
    backend: ClassicAgentsBackend, emulator: Emulator, progress: Progress
) -> None:
    """Nothing is left reading the run's stream (a reader blocked on it would hold the server's exit)."""
    emulator.state.faults.push("POST /threads/{thread_id}/runs/{run_id}/cancel", 500, retry_after=None, times=10)
    emulator.state.stream_dropped.clear()

    with anyio.fail_after(30):
        result = await backend.run(code("import time\ntime.sleep(60)", timeout=2), progress)

    assert result.status == "timeout"
    assert await anyio.to_thread.run_sync(emulator.state.stream_dropped.wait, 10)
    emulator.state.faults = type(emulator.state.faults)()
    stuck = list(emulator.state.runs.values())[-1]
    await backend._cancel_run(stuck["thread_id"], stuck["id"])


async def test_many_waiting_azure_requests_do_not_starve_the_event_loops_threads(
    backend: ClassicAgentsBackend,
) -> None:
    """Each waiting request or stream read holds a thread of the loop's default executor (6 here by default): a
    started backend gives it enough that 20 held at once still leave room for more."""
    import asyncio
    import threading

    held = 20
    barrier = threading.Barrier(held + 1)
    loop = asyncio.get_running_loop()
    waiting = [loop.run_in_executor(None, barrier.wait, 30) for _ in range(held)]
    with anyio.fail_after(30):
        await loop.run_in_executor(None, barrier.wait, 30)  # only runs if a thread is still free
        await asyncio.gather(*waiting)
