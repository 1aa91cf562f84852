"""The azure backend against the emulator with the real azure-ai-projects / openai SDKs: the happy paths."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest

from ci_mcp.backends.azure.agents.backend import AzureAgentsBackend, SessionState
from ci_mcp.errors import InvalidInputError, NotFoundError
from ci_mcp.models import ErrorOutput, ImageOutput, RunRequest, TextOutput
from tests.azure.conftest import ProgressLog
from tests.azure_emulator.server import Emulator
from tests.azure_emulator.state import ScriptedTurns, Turn
from tests.conftest import files_of

pytestmark = pytest.mark.anyio

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CSV = b"city,sales\nPune,3\nDelhi,5\n"
CHART_CODE = (
    "import pandas as pd, matplotlib.pyplot as plt\n"
    "df = pd.read_csv('/mnt/data/sales.csv')\n"
    "print(df['sales'].sum())\n"
    "df.plot.bar(x='city', y='sales')\n"
    "plt.savefig('/mnt/data/chart.png')\n"
)


def answers(result: object) -> list[str]:
    return [o.text for o in result.outputs if isinstance(o, TextOutput) and o.kind == "answer"]  # type: ignore[attr-defined]


async def test_upload_keeps_a_local_copy_and_sends_the_file_to_azure_with_purpose_assistants(
    backend: AzureAgentsBackend, emu: Emulator
) -> None:
    info = await files_of(backend).upload("sales.csv", CSV)

    assert (await files_of(backend).path(info.file_id)).read_bytes() == CSV
    assert info.origin == "upload" and info.media_type == "text/csv"
    remote = [f for f in emu.state.files.values() if f.data == CSV and f.filename == "sales.csv"]
    assert remote and remote[-1].purpose == "assistants"


async def test_run_with_code_returns_the_output_the_answer_and_a_real_png_chart(
    backend: AzureAgentsBackend, emu: Emulator, progress: ProgressLog
) -> None:
    info = await files_of(backend).upload("sales.csv", CSV)

    result = await backend.run(RunRequest(None, CHART_CODE, None, (info.file_id,)), progress)

    assert result.status == "ok"
    stdout = [o.text for o in result.outputs if isinstance(o, TextOutput) and o.kind == "stdout"]
    assert stdout and "8" in stdout[0]
    images = [o for o in result.outputs if isinstance(o, ImageOutput)]
    assert len(images) == 1 and images[0].data.startswith(PNG_MAGIC)
    assert images[0].file.name == "chart.png" and images[0].file.origin == "generated"
    assert images[0].file.session_id == result.session_id
    assert [f.name for f in result.generated_files] == ["chart.png"]
    assert "exactly" in emu.state.model_calls[-1][0] and CHART_CODE.strip() in emu.state.model_calls[-1][0]
    assert not any(isinstance(o, TextOutput) and o.kind == "code" for o in result.outputs)


async def test_generated_files_stay_fetchable_after_the_run(backend: AzureAgentsBackend) -> None:
    code = "open('/mnt/data/report.txt', 'w').write('total=8')\nprint('saved')"
    result = await backend.run(RunRequest(None, code, None), ProgressLog())

    (report,) = result.generated_files
    assert report.name == "report.txt" and report.media_type == "text/plain"
    assert (await files_of(backend).path(report.file_id)).read_text() == "total=8"
    assert (await files_of(backend).info(report.file_id)) == report
    assert report in await files_of(backend).list(result.session_id)
    assert not any(isinstance(o, ImageOutput) for o in result.outputs)


async def test_a_session_continues_in_the_same_conversation_with_its_python_state(
    backend: AzureAgentsBackend, emu: Emulator
) -> None:
    first = await backend.run(RunRequest(None, "x = 41", None), ProgressLog())
    conversations_before = len(emu.state.conversations)

    second = await backend.run(RunRequest(first.session_id, "print(x + 1)", None), ProgressLog())

    assert second.session_id == first.session_id
    assert any(isinstance(o, TextOutput) and o.text.strip() == "42" for o in second.outputs)
    assert len(emu.state.conversations) == conversations_before
    state = backend.records.get(first.session_id, SessionState).state
    conversation = emu.state.conversations[str(state.conversation_id)]
    codes = [item["code"].strip() for item in conversation.items if item["type"] == "code_interpreter_call"]
    assert codes == ["x = 41", "print(x + 1)"]


async def test_files_attached_earlier_in_a_session_are_still_there_in_later_runs(
    backend: AzureAgentsBackend,
) -> None:
    info = await files_of(backend).upload("sales.csv", CSV)
    first = await backend.run(RunRequest(None, "print('ok')", None, (info.file_id,)), ProgressLog())

    second = await backend.run(
        RunRequest(first.session_id, "import os; print(sorted(os.listdir('/mnt/data')))", None), ProgressLog()
    )

    assert any("sales.csv" in o.text for o in second.outputs if isinstance(o, TextOutput) and o.kind == "stdout")


async def test_a_warm_run_costs_at_most_two_requests_plus_one_per_generated_file(
    backend: AzureAgentsBackend, emu: Emulator
) -> None:
    info = await files_of(backend).upload("sales.csv", CSV)
    first = await backend.run(RunRequest(None, "print(1)", None, (info.file_id,)), ProgressLog())
    mark = emu.state.mark()

    warm = await backend.run(RunRequest(first.session_id, CHART_CODE, None), ProgressLog())

    routes = [r.route for r in emu.state.requests_since(mark)]
    assert len(warm.generated_files) == 1
    assert len(routes) <= 2 + len(warm.generated_files), routes
    assert routes.count("POST /openai/v1/responses") == 1
    assert "POST /openai/v1/files" not in routes and "POST /agents/{agent_name}/versions" not in routes


async def test_files_the_agent_did_not_cite_are_found_by_listing_the_container_once(
    backend: AzureAgentsBackend, emu: Emulator
) -> None:
    emu.state.model = ScriptedTurns(
        Turn("open('/mnt/data/quiet.txt', 'w').write('q')", "Saved.", cite=False),
        Turn("print('nothing new')", "Nothing new.", cite=False),
    )
    first = await backend.run(RunRequest(None, None, "save a file quietly"), ProgressLog())
    assert [f.name for f in first.generated_files] == ["quiet.txt"]

    second = await backend.run(RunRequest(first.session_id, None, "anything else?"), ProgressLog())

    assert second.generated_files == ()


async def test_one_agent_version_is_reused_across_runs_and_backends(
    make_backend: Callable[..., Awaitable[AzureAgentsBackend]], emu: Emulator
) -> None:
    name = "reuse-check-agent"
    first = await make_backend(azure_agent_name=name)
    await first.run(RunRequest(None, "print(1)", None), ProgressLog())
    await first.run(RunRequest(None, "print(2)", None), ProgressLog())
    second = await make_backend(azure_agent_name=name)  # a restarted server finds it again
    await second.run(RunRequest(None, "print(3)", None), ProgressLog())
    assert len(emu.state.agents[name]) == 1

    changed = await make_backend(azure_agent_name=name, azure_instructions="Answer in French.")
    await changed.run(RunRequest(None, "print(4)", None), ProgressLog())
    assert len(emu.state.agents[name]) == 2


async def test_files_ride_on_the_response_as_structured_inputs_of_the_agent_version(
    backend: AzureAgentsBackend, emu: Emulator
) -> None:
    a = await files_of(backend).upload("a.csv", b"x\n1\n")
    b = await files_of(backend).upload("b.csv", b"x\n2\n")
    await backend.run(RunRequest(None, "print(1)", None, (a.file_id, b.file_id)), ProgressLog())

    agent = emu.state.agents[backend._versions.agent_name]
    tools = agent[-1]["definition"]["tools"]
    assert tools[0]["container"]["file_ids"] == ["{{file_1}}", "{{file_2}}"]
    assert set(agent[-1]["definition"]["structured_inputs"]) == {"file_1", "file_2"}


async def test_a_plain_language_request_shows_the_code_the_agent_wrote(
    backend: AzureAgentsBackend, emu: Emulator
) -> None:
    emu.state.model = ScriptedTurns(Turn("print(6 * 7)", "The answer is {stdout}"))

    result = await backend.run(RunRequest(None, None, "What is six times seven?"), ProgressLog())

    kinds = [(o.kind, o.text.strip()) for o in result.outputs if isinstance(o, TextOutput)]
    assert kinds == [("code", "print(6 * 7)"), ("stdout", "42"), ("answer", "The answer is 42")]
    assert emu.state.model_calls[-1][0] == "What is six times seven?"


async def test_progress_reports_the_stages_of_the_stream_in_increasing_order(
    backend: AzureAgentsBackend, progress: ProgressLog
) -> None:
    await backend.run(RunRequest(None, "open('/mnt/data/t.txt','w').write('x')", None), progress)

    for stage in ("queued on Azure", "writing code", "running code", "answering", "downloading 1 generated file(s)"):
        assert stage in progress.messages
    assert progress.messages.index("writing code") < progress.messages.index("running code")
    assert progress.values == sorted(progress.values) and len(set(progress.values)) == len(progress.values)


async def test_an_unknown_session_or_file_is_a_not_found_error(backend: AzureAgentsBackend) -> None:
    with pytest.raises(NotFoundError):
        await backend.run(RunRequest("sess-doesnotexist", "print(1)", None), ProgressLog())
    with pytest.raises(NotFoundError):
        await backend.run(RunRequest(None, "print(1)", None, ("file-nope",)), ProgressLog())


async def test_a_run_without_code_or_request_is_invalid_input(backend: AzureAgentsBackend) -> None:
    with pytest.raises(InvalidInputError):
        await backend.run(RunRequest(None, None, None), ProgressLog())


async def test_closing_a_session_deletes_the_conversation_and_refuses_further_runs(
    backend: AzureAgentsBackend, emu: Emulator
) -> None:
    result = await backend.run(RunRequest(None, "print(1)", None), ProgressLog())
    conversation = backend.records.get(result.session_id, SessionState).state.conversation_id
    assert conversation in emu.state.conversations

    await backend.close_session(result.session_id)

    assert conversation not in emu.state.conversations
    assert result.session_id not in [s.session_id for s in await backend.sessions()]
    with pytest.raises(NotFoundError, match="closed"):
        await backend.run(RunRequest(result.session_id, "print(2)", None), ProgressLog())


async def test_describe_says_code_is_sent_as_an_instruction_to_the_agent(backend: AzureAgentsBackend) -> None:
    text = backend.describe()
    assert "run exactly that code" in text and "/mnt/data" in text
    assert backend.accepts_code and backend.accepts_request and backend.name == "azure"


async def test_code_that_raises_returns_the_traceback_as_data_with_status_error(backend: AzureAgentsBackend) -> None:
    result = await backend.run(RunRequest(None, "print('before')\n1 / 0", None), ProgressLog())

    assert result.status == "error"
    errors = [o for o in result.outputs if isinstance(o, ErrorOutput)]
    assert len(errors) == 1 and errors[0].name == "ZeroDivisionError" and errors[0].value == "division by zero"
    assert "Traceback" in errors[0].traceback
    assert any(isinstance(o, TextOutput) and o.kind == "stdout" and "before" in o.text for o in result.outputs)
