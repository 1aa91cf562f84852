"""The emulator speaks the wire shapes of docs/azure-api.md (checked at the HTTP level, without the SDKs)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx2
import pytest

from tests.azure_emulator.server import Emulator


@pytest.fixture
def http(emu: Emulator) -> Iterator[httpx2.Client]:
    with httpx2.Client(
        base_url=emu.endpoint + "/",
        verify=emu.ssl_context(),
        headers={"Authorization": "Bearer emulator-token"},
        timeout=60,
    ) as client:
        yield client


def test_project_routes_require_api_version_v1_and_openai_routes_do_not(http: httpx2.Client) -> None:
    body = {"definition": {"kind": "prompt", "model": "gpt-4.1", "tools": []}}
    assert http.post("agents/fidelity-agent/versions", json=body).status_code == 400
    created = http.post("agents/fidelity-agent/versions", params={"api-version": "v1"}, json=body)
    assert created.status_code == 200 and created.json()["object"] == "agent.version"
    assert http.post("openai/v1/conversations", json={}).json()["object"] == "conversation"


def test_requests_without_the_bearer_token_are_refused_with_an_error_body(http: httpx2.Client) -> None:
    refused = http.post("openai/v1/conversations", json={}, headers={"Authorization": "Bearer wrong"})
    assert refused.status_code == 401 and set(refused.json()["error"]) >= {"code", "message"}


def test_a_streamed_response_is_sse_with_typed_sequenced_one_line_events_ending_in_completed(
    http: httpx2.Client,
) -> None:
    body = {"definition": {"kind": "prompt", "model": "gpt-4.1", "tools": [{"type": "code_interpreter"}]}}
    http.post("agents/sse-agent/versions", params={"api-version": "v1"}, json=body)
    conv = http.post("openai/v1/conversations", json={}).json()["id"]
    request = {
        "conversation": conv,
        "input": "```python\nprint(1)\n```",
        "stream": True,
        "agent_reference": {"type": "agent_reference", "name": "sse-agent"},
    }

    response = http.post("openai/v1/responses", json=request)

    assert response.headers["content-type"].startswith("text/event-stream")
    frames = [f for f in response.text.split("\n\n") if f]
    events = []
    for frame in frames:
        event_line, data_line = frame.split("\n")
        event = json.loads(data_line.removeprefix("data: "))
        assert event_line == f"event: {event['type']}"
        events.append(event)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    types = [e["type"] for e in events]
    assert types[:2] == ["response.created", "response.in_progress"] and types[-1] == "response.completed"
    assert types.index("response.code_interpreter_call.interpreting") < types.index("response.output_text.delta")


def test_container_files_are_listed_newest_first_in_cursor_pages(emu: Emulator, http: httpx2.Client) -> None:
    container = emu.state.new_container()
    for i in range(3):
        emu.state.attach(container, emu.state.add_file(f"f{i}.csv", b"x"))

    first = http.get(f"openai/v1/containers/{container.id}/files", params={"limit": 2}).json()
    rest = http.get(f"openai/v1/containers/{container.id}/files", params={"limit": 2, "after": first["last_id"]}).json()

    assert [f["path"] for f in first["data"]] == ["/mnt/data/f2.csv", "/mnt/data/f1.csv"] and first["has_more"]
    assert [f["path"] for f in rest["data"]] == ["/mnt/data/f0.csv"] and not rest["has_more"]


def test_an_expired_container_answers_400_container_is_expired(emu: Emulator, http: httpx2.Client) -> None:
    container = emu.state.new_container()
    emu.state.expire_container(container.id)

    answer = http.get(f"openai/v1/containers/{container.id}/files")

    assert answer.status_code == 400 and answer.json()["error"]["message"] == "Container is expired."


def test_a_queued_fault_answers_once_with_retry_after_headers(emu: Emulator, http: httpx2.Client) -> None:
    emu.state.faults.push("POST /openai/v1/conversations", status=429, retry_after=1.5)

    throttled = http.post("openai/v1/conversations", json={})
    then = http.post("openai/v1/conversations", json={})

    assert throttled.status_code == 429 and throttled.headers["retry-after"] == "2"
    assert throttled.headers["retry-after-ms"] == "1500" and then.status_code == 200


def test_a_stream_error_is_a_nested_error_event_then_response_failed_after_some_output(
    emu: Emulator, http: httpx2.Client
) -> None:
    body = {"definition": {"kind": "prompt", "model": "gpt-4.1", "tools": [{"type": "code_interpreter"}]}}
    http.post("agents/sse-error-agent/versions", params={"api-version": "v1"}, json=body)
    emu.state.faults.error_in_stream("rate_limit_exceeded", "Rate limit is exceeded.", after_output=True)
    request = {
        "input": "```python\nprint(1)\n```",
        "stream": True,
        "agent_reference": {"type": "agent_reference", "name": "sse-error-agent"},
    }

    frames = [f for f in http.post("openai/v1/responses", json=request).text.split("\n\n") if f]

    events = [json.loads(f.split("\n")[1].removeprefix("data: ")) for f in frames]
    types = [e["type"] for e in events]
    assert types[-2:] == ["error", "response.failed"] and "response.output_text.delta" in types
    assert events[-2]["error"]["code"] == "rate_limit_exceeded" and "code" not in events[-2]
    assert events[-2]["error"]["message"] == "Rate limit is exceeded."
    assert events[-1]["response"]["status"] == "failed"


def test_cancelling_a_response_that_is_not_in_the_background_is_refused_with_400(
    emu: Emulator, http: httpx2.Client
) -> None:
    body = {"definition": {"kind": "prompt", "model": "gpt-4.1", "tools": [{"type": "code_interpreter"}]}}
    http.post("agents/cancel-agent/versions", params={"api-version": "v1"}, json=body)
    request = {"input": "no code", "agent_reference": {"type": "agent_reference", "name": "cancel-agent"}}
    response_id = http.post("openai/v1/responses", json=request).json()["id"]

    refused = http.post(f"openai/v1/responses/{response_id}/cancel")

    assert refused.status_code == 400 and "background" in refused.json()["error"]["message"]
