"""Pure parts of the azure-classic backend: the missing extra, doctor, retries, event tracking, output planning."""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path

import pytest

from ci_mcp.backends.azure.classic.backend import ClassicAgentsBackend
from ci_mcp.backends.azure.classic.calls import failed_run_error
from ci_mcp.backends.azure.classic.doctor import offline_checks
from ci_mcp.backends.azure.classic.outputs import AnswerText, CodeText, ImageRef, LogText, plan_outputs
from ci_mcp.backends.azure.classic.prompt import Attached, compose_message
from ci_mcp.backends.azure.classic.stream import RunTracker
from ci_mcp.errors import BackendUnavailableError, ConfigError, RunFailedError
from ci_mcp.settings import Settings
from ci_mcp.store import FileStore

ENDPOINT = "https://acct.services.ai.azure.com/api/projects/proj"
TODAY = dt.date(2027, 1, 30)


def settings(tmp_path: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {"backend": "azure-classic", "azure_endpoint": ENDPOINT, "data_dir": tmp_path}
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type,unused-ignore]


# -- the optional extra and doctor -------------------------------------------------------------------------------------


def test_a_missing_extra_is_a_config_error_that_gives_the_install_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "azure.ai.agents", None)
    store = FileStore(tmp_path)
    try:
        with pytest.raises(ConfigError, match=r"pip install 'ci-mcp\[classic\]'"):
            ClassicAgentsBackend(settings(tmp_path), store)
    finally:
        store.close()


def test_doctor_reports_the_missing_extra_as_a_failed_check(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "azure.ai.agents", None)

    name, ok, message = offline_checks(settings(tmp_path))[0]

    assert name == "azure-ai-agents" and not ok
    assert "ci-mcp[classic]" in message


def test_doctor_warns_of_the_retirement_date_with_the_days_left_and_the_way_out(tmp_path: Path) -> None:
    checks = {name: (ok, message) for name, ok, message in offline_checks(settings(tmp_path), today=TODAY)}

    assert checks["azure-ai-agents"][0] and checks["project endpoint"][0]
    ok, message = checks["retirement"]
    assert ok and message.startswith("warning: ")
    assert "2027-03-31 (60 days from now)" in message
    assert "CI_MCP_BACKEND=azure" in message and "docs/classic-backend.md" in message


def test_doctor_fails_the_retirement_check_after_the_date(tmp_path: Path) -> None:
    checks = {name: ok for name, ok, _ in offline_checks(settings(tmp_path), today=dt.date(2027, 4, 1))}

    assert checks["retirement"] is False


@pytest.mark.parametrize(
    ("overrides", "ok", "phrase"),
    [
        ({"azure_endpoint": None}, False, "AZURE_AI_PROJECT_ENDPOINT"),
        ({"azure_endpoint": None, "project_connection_string": "h;s;r;p"}, False, "PROJECT_CONNECTION_STRING"),
        ({"azure_endpoint": "http://acct.services.ai.azure.com/api/projects/p"}, False, "not https"),
        ({"azure_endpoint": "https://acct.openai.azure.com/"}, True, "does not look like a Foundry project"),
    ],
)
def test_doctor_names_the_endpoint_setting_to_fix(
    tmp_path: Path, overrides: dict[str, object], ok: bool, phrase: str
) -> None:
    checks = {name: (passed, message) for name, passed, message in offline_checks(settings(tmp_path, **overrides))}

    assert checks["project endpoint"][0] is ok and phrase in checks["project endpoint"][1]


@pytest.mark.anyio
async def test_doctor_says_the_model_deployment_was_not_checked_when_the_project_cannot_be_asked(
    tmp_path: Path,
) -> None:
    from ci_mcp.backends.azure.classic.doctor import diagnose

    checks = await diagnose(settings(tmp_path, azure_endpoint=None, azure_model="gpt-4o"), today=TODAY)

    by_name = {name: (ok, message) for name, ok, message in checks}
    assert by_name["model deployment"] == (False, "not checked: fix the checks above first")
    assert [name for name, _, _ in checks].count("model deployment") == 1


def test_doctor_fails_a_model_that_cannot_use_the_code_interpreter(tmp_path: Path) -> None:
    checks = {name: (ok, message) for name, ok, message in offline_checks(settings(tmp_path, azure_model="o3-mini"))}

    assert checks["model deployment"][0] is False and "CI_MCP_AZURE_MODEL" in checks["model deployment"][1]


# -- errors and retries ------------------------------------------------------------------------------------------------


def test_failed_run_errors_keep_the_service_message_and_classify_it() -> None:
    limited = failed_run_error("rate_limit_exceeded", "Rate limit is exceeded. Try again in 12 seconds.")
    assert isinstance(limited, BackendUnavailableError) and limited.retry_after == 12
    server = failed_run_error("server_error", "Sorry, something went wrong.")
    assert isinstance(server, RunFailedError) and "send the same step once more" in str(server)
    other = failed_run_error(None, None)
    assert isinstance(other, RunFailedError) and "no message given" in str(other)


# -- the run's events and outputs --------------------------------------------------------------------------------------


def run_event(status: str, **extra: object) -> dict[str, object]:
    return {"id": "run_1", "object": "thread.run", "status": status, **extra}


def test_tracker_sends_progress_only_when_the_news_changes() -> None:
    tracker = RunTracker()
    delta = {
        "id": "step_1",
        "delta": {"step_details": {"tool_calls": [{"index": 0, "code_interpreter": {"input": "x"}}]}},
    }

    messages = [
        tracker.feed("thread.run.created", run_event("queued")),
        tracker.feed("thread.run.queued", run_event("queued")),
        tracker.feed("thread.run.step.delta", delta),
        tracker.feed("thread.run.step.delta", delta),
    ]

    assert messages == ["Azure run queued", None, "Agent is writing code", None]
    assert tracker.run_id == "run_1" and not tracker.finished


def test_tracker_keeps_the_last_error_and_the_tools_a_run_waits_for() -> None:
    failed = RunTracker()
    failed.feed("thread.run.failed", run_event("failed", last_error={"code": "server_error", "message": "boom"}))
    assert failed.terminal and failed.failure is not None and failed.failure.message == "boom"

    waiting = RunTracker()
    call = {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
    action = {"type": "submit_tool_outputs", "submit_tool_outputs": {"tool_calls": [call]}}
    waiting.feed("thread.run.requires_action", run_event("requires_action", required_action=action))
    assert waiting.requires_action and waiting.finished and waiting.required_tools == ["get_weather"]


def test_tracker_reads_the_sdks_stringified_error_event() -> None:
    tracker = RunTracker()
    tracker.feed("error", str({"error": {"message": "stream broke", "code": "server_error"}}))

    assert tracker.stream_error == "stream broke" and tracker.finished


def test_outputs_follow_the_stream_order_and_take_file_names_from_sandbox_links() -> None:
    tracker = RunTracker()
    tracker.feed("thread.message.created", {"id": "msg_1", "role": "assistant"})
    step = {
        "id": "step_1",
        "type": "tool_calls",
        "step_details": {
            "type": "tool_calls",
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "code_interpreter",
                    "code_interpreter": {
                        "input": "print(1)",
                        "outputs": [{"type": "logs", "logs": "1\n"}, {"type": "image", "image": {"file_id": "img"}}],
                    },
                }
            ],
        },
    }
    tracker.feed("thread.run.step.created", step)
    tracker.feed("thread.run.step.completed", step)
    note = {"type": "file_path", "text": "sandbox:/mnt/data/out.csv", "file_path": {"file_id": "f1"}}
    listed = [
        {
            "id": "msg_1",
            "role": "assistant",
            "content": [{"type": "text", "text": {"value": "Plan.", "annotations": []}}],
        },
        {
            "id": "msg_2",
            "role": "assistant",
            "content": [
                {"type": "image_file", "image_file": {"file_id": "img"}},
                {"type": "text", "text": {"value": "See sandbox:/mnt/data/out.csv", "annotations": [note]}},
            ],
        },
    ]

    plan = plan_outputs(tracker, listed)

    assert plan[0] == AnswerText("Plan.")
    assert plan[1:4] == [CodeText("print(1)"), LogText("1\n"), ImageRef("img")]
    assert plan[4] == ImageRef("img")
    last = plan[5]
    assert isinstance(last, AnswerText) and last.links[0].name == "out.csv" and last.links[0].remote_id == "f1"


def test_code_with_backtick_fences_gets_a_longer_fence() -> None:
    text = compose_message(None, 'print("```")', [Attached("d.csv", "assistant-1")])

    assert '````python\nprint("```")\n````' in text
    assert "'d.csv' (file id assistant-1)" in text
