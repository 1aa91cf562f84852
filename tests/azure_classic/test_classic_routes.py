"""The emulator's classic routes as the real azure-ai-agents SDK sees them (docs/azure-api.md §B, §F)."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Iterator
from pathlib import Path

import pytest
from azure.ai.agents import AgentsClient
from azure.ai.agents.models import (
    CodeInterpreterToolDefinition,
    FilePurpose,
    MessageAttachment,
    MessageRole,
    ThreadMessage,
    ThreadRun,
)
from azure.core.exceptions import HttpResponseError

from tests.azure_emulator.classic_routes import live_run, require_action_next_run
from tests.azure_emulator.server import Emulator

CHART_CODE = """
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
from IPython.display import Image, display
plt.plot([1, 2, 3])
plt.savefig("/mnt/data/line.png")
display(Image(filename="/mnt/data/line.png"))
"""


@pytest.fixture
def client(emulator: Emulator) -> Iterator[AgentsClient]:
    with AgentsClient(emulator.endpoint, emulator.credential(), connection_verify=emulator.ca_file, retry_total=0) as c:
        yield c


@pytest.fixture
def agent_id(client: AgentsClient) -> str:
    agent = client.create_agent(model="gpt-4o", name="routes-test", tools=[CodeInterpreterToolDefinition()])
    return str(agent.id)


def test_upload_reads_the_name_from_a_separate_filename_field(client: AgentsClient, emulator: Emulator) -> None:
    info = client.files.upload(file=io.BytesIO(b"a,b\n"), filename="in.csv", purpose=FilePurpose.AGENTS)

    assert info.filename == "in.csv" and info.status == "processed"
    assert emulator.state.files[info.id].data == b"a,b\n"


def test_upload_and_poll_of_a_path_needs_no_status_poll(
    client: AgentsClient, emulator: Emulator, tmp_path: Path
) -> None:
    source = tmp_path / "data.csv"
    source.write_bytes(b"x\n1\n")
    mark = emulator.state.mark()

    info = client.files.upload_and_poll(file_path=str(source), purpose=FilePurpose.AGENTS)

    assert info.filename == "data.csv"
    assert [r.route for r in emulator.state.requests_since(mark)] == ["POST /files"]


def test_every_classic_route_requires_api_version_v1(emulator: Emulator, client: AgentsClient) -> None:
    from azure.core.rest import HttpRequest

    response = client.send_request(HttpRequest("GET", f"{emulator.endpoint}/assistants?api-version=v1"))
    assert response.status_code == 200
    response = client.send_request(HttpRequest("GET", f"{emulator.endpoint}/assistants?api-version=2024-01-01"))
    assert response.status_code == 400


def test_message_pages_end_with_a_null_last_id_so_the_sdk_pager_stops(client: AgentsClient, emulator: Emulator) -> None:
    thread = client.threads.create()
    for n in range(25):
        client.messages.create(thread.id, role=MessageRole.USER, content=f"m{n}")
    mark = emulator.state.mark()

    listed = list(client.messages.list(thread.id, limit=10, order="asc"))

    assert [m.text_messages[0].text.value for m in listed] == [f"m{n}" for n in range(25)]
    pages = [r for r in emulator.state.requests_since(mark) if r.route == "GET /threads/{thread_id}/messages"]
    assert len(pages) == 4  # 10 + 10 + 5, then the empty page with last_id null
    assert pages[-1].query.get("after") == listed[-1].id


def test_agents_are_listed_newest_first_across_pages(client: AgentsClient) -> None:
    made = [client.create_agent(model="gpt-4o", name=f"paged-{n}").id for n in range(3)]

    names = [a.id for a in client.list_agents(limit=2)]

    assert names[:3] == list(reversed(made))


def test_a_streamed_run_sends_run_step_and_message_events_then_done(
    client: AgentsClient, emulator: Emulator, agent_id: str
) -> None:
    thread = client.threads.create()
    client.messages.create(thread.id, role="user", content=f"```python\n{CHART_CODE}\n```")

    with client.runs.stream(thread.id, agent_id=agent_id) as stream:
        events = [(event_type, data) for event_type, data, _ in stream]

    types = [t for t, _ in events]
    for expected in (
        "thread.run.created",
        "thread.run.queued",
        "thread.run.in_progress",
        "thread.run.step.created",
        "thread.run.step.delta",
        "thread.run.step.completed",
        "thread.message.created",
        "thread.message.delta",
        "thread.message.completed",
        "thread.run.completed",
    ):
        assert expected in types
    assert (
        types.index("thread.run.queued") < types.index("thread.run.in_progress") < types.index("thread.run.completed")
    )
    assert types[-1] == "done"
    final = [d for t, d in events if t == "thread.run.completed"][0]
    assert isinstance(final, ThreadRun) and final.agent_id == agent_id
    message = [d for t, d in events if t == "thread.message.completed"][0]
    assert isinstance(message, ThreadMessage)
    assert len(message.image_contents) == 1
    assert [a.text for a in message.file_path_annotations] == ["sandbox:/mnt/data/line.png"]


def test_generated_files_download_and_run_messages_filter_by_run(
    client: AgentsClient, emulator: Emulator, agent_id: str
) -> None:
    thread = client.threads.create()
    client.messages.create(thread.id, role="user", content=f"```python\n{CHART_CODE}\n```")
    with client.runs.stream(thread.id, agent_id=agent_id) as stream:
        run_id = next(d.id for t, d, _ in stream if t == "thread.run.created")
        stream.until_done()

    messages = list(client.messages.list(thread.id, run_id=run_id))

    assert [m.role for m in messages] == ["assistant"]
    image_id = messages[0].image_contents[0].image_file.file_id
    assert b"".join(client.files.get_content(image_id)).startswith(b"\x89PNG")
    path_id = messages[0].file_path_annotations[0].file_path.file_id
    assert b"".join(client.files.get_content(path_id)).startswith(b"\x89PNG")


def test_a_run_created_without_stream_goes_from_queued_to_completed(
    client: AgentsClient, emulator: Emulator, agent_id: str
) -> None:
    thread = client.threads.create()
    client.messages.create(thread.id, role="user", content="```python\nprint(6 * 7)\n```")

    run = client.runs.create(thread.id, agent_id=agent_id)
    assert run.status == "queued"
    live = live_run(emulator.state, run.id)
    assert live is not None and live.task is not None
    emulator.call_soon(asyncio.wait_for(asyncio.shield(live.task), 30))

    done = client.runs.get(thread.id, run.id)
    assert done.status == "completed" and done.completed_at is not None
    answer = client.messages.get_last_message_text_by_role(thread.id, MessageRole.AGENT)
    assert answer is not None and "42" in answer.text.value
    steps = list(client.run_steps.list(thread.id, run.id))
    assert {s.type for s in steps} == {"tool_calls", "message_creation"}


def test_a_thread_with_a_run_waiting_for_tools_refuses_messages_until_cancelled(
    client: AgentsClient, emulator: Emulator, agent_id: str
) -> None:
    thread = client.threads.create()
    client.messages.create(thread.id, role="user", content="hi")
    require_action_next_run(emulator.state, "lookup")
    with client.runs.stream(thread.id, agent_id=agent_id) as stream:
        events = [(t, d) for t, d, _ in stream]
    waiting = [d for t, d in events if t == "thread.run.requires_action"][0]
    assert waiting.required_action.submit_tool_outputs.tool_calls[0].function.name == "lookup"

    with pytest.raises(HttpResponseError, match="while a run"):
        client.messages.create(thread.id, role="user", content="again")
    assert client.runs.cancel(thread.id, waiting.id).status == "cancelled"
    client.messages.create(thread.id, role="user", content="again")


def test_attachments_must_name_known_files(client: AgentsClient) -> None:
    thread = client.threads.create()
    attachment = MessageAttachment(file_id="assistant-nope", tools=[CodeInterpreterToolDefinition()])

    with pytest.raises(HttpResponseError, match="Invalid file id"):
        client.messages.create(thread.id, role="user", content="x", attachments=[attachment])


def test_deleting_objects_answers_the_deleted_shape(client: AgentsClient, emulator: Emulator, agent_id: str) -> None:
    info = client.files.upload(file=io.BytesIO(b"1"), filename="d.txt", purpose=FilePurpose.AGENTS)
    thread = client.threads.create()

    client.files.delete(info.id)
    client.threads.delete(thread.id)
    client.delete_agent(agent_id)

    assert info.id not in emulator.state.files
    assert thread.id not in emulator.state.threads
    assert agent_id not in emulator.state.assistants
