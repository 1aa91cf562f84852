"""Pure pieces of the azure backend: log splitting, the message to the agent, Retry-After parsing, redaction."""

from __future__ import annotations

import pytest

from ci_mcp.backends.azure.agents.outputs import split_logs
from ci_mcp.backends.azure.agents.wire import ImageRef, compose_message, digest_response, image_reference
from ci_mcp.backends.azure.errors import failed_response_error, redact, retry_after_seconds
from ci_mcp.errors import BackendUnavailableError, RunFailedError
from ci_mcp.models import ErrorOutput, FileInfo, RunRequest, TextOutput


def test_a_plain_python_traceback_in_the_logs_becomes_an_error_output() -> None:
    logs = (
        "rows: 3\n"
        "Traceback (most recent call last):\n"
        '  File "<stdin>", line 2, in <module>\n'
        "KeyError: 'operating_profit'\n"
    )
    items = split_logs(logs)
    assert items[0] == TextOutput("rows: 3\n", kind="stdout")
    assert isinstance(items[1], ErrorOutput)
    assert (items[1].name, items[1].value) == ("KeyError", "'operating_profit'")


def test_logs_without_a_traceback_stay_plain_stdout() -> None:
    assert split_logs("all good\n") == [TextOutput("all good\n", kind="stdout")]


def _file(name: str) -> FileInfo:
    return FileInfo("file-" + name, name, 1, "text/csv", "upload", "0", 0.0)


def test_the_message_asks_the_agent_to_run_the_given_code_exactly_and_names_the_files() -> None:
    message = compose_message(RunRequest(None, "print(1)\n", "then explain"), [_file("a.csv")], [_file("a.csv")])
    assert "Run exactly the following Python code" in message
    assert "```python\nprint(1)\n```" in message and "Then: then explain" in message
    assert "/mnt/data/a.csv" in message


def test_retry_after_prefers_milliseconds_and_understands_http_dates() -> None:
    assert retry_after_seconds({"Retry-After": "3", "retry-after-ms": "250"}) == 0.25
    assert retry_after_seconds({"retry-after": "7"}) == 7
    assert retry_after_seconds({"Retry-After": "Wed, 21 Oct 2015 07:28:10 GMT"}, now=1445412480.0) == 10
    assert retry_after_seconds({}) is None


def test_redaction_drops_bearer_tokens_and_url_queries() -> None:
    text = redact("GET https://x.blob.core.windows.net/c/f.png?sv=1&sig=SECRET failed; Bearer eyJabc.def")
    assert "SECRET" not in text and "eyJabc" not in text and "https://x.blob.core.windows.net/c/f.png" in text


def test_failed_and_incomplete_responses_map_to_errors_that_say_what_to_do() -> None:
    assert isinstance(failed_response_error("failed", "server_error", "Sorry"), RunFailedError)
    with pytest.raises(RunFailedError, match="incomplete"):
        raise failed_response_error("incomplete", None, "reason: max_output_tokens")
    assert isinstance(
        failed_response_error("failed", "rate_limit_exceeded", "Try again in 3 s"), BackendUnavailableError
    )


def test_every_output_item_and_annotation_is_read_not_only_the_last() -> None:
    response = {
        "id": "resp_1",
        "status": "completed",
        "output": [
            {"type": "reasoning", "id": "rs_1"},
            {
                "type": "message",
                "role": "assistant",
                "content": [
                    {
                        "type": "output_text",
                        "text": "a",
                        "annotations": [
                            {
                                "type": "container_file_citation",
                                "container_id": "c1",
                                "file_id": "f1",
                                "filename": "x.png",
                            }
                        ],
                    }
                ],
            },
            {"type": "code_interpreter_call", "container_id": "c1", "code": "pass", "outputs": None},
            {"type": "reasoning", "id": "rs_2"},
        ],
    }
    digest = digest_response(response)
    assert [c.file_id for c in digest.citations] == ["f1"] and digest.container_ids == ("c1",)
    assert len(digest.steps) == 2


def test_an_image_url_is_a_container_file_reference_only_when_it_names_one() -> None:
    url = "https://a.services.ai.azure.com/api/projects/p/openai/v1/containers/cntr_1/files/cfile_2/content?x=1"
    assert image_reference(url, "cntr_9") == ImageRef("cntr_1", file_id="cfile_2")
    assert image_reference("sandbox:/mnt/data/plot.png", "cntr_9") == ImageRef("cntr_9", path="/mnt/data/plot.png")
    assert image_reference("sandbox:/mnt/data/../etc/passwd", "cntr_9") is None
    assert image_reference("https://cdn.example.com/plot.png", "cntr_9") is None
