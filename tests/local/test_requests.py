"""Natural-language requests on the local backend, with a model behind an OpenAI-compatible endpoint (a loopback
fake here that answers like Ollama or vLLM would)."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from mcp import Client
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from ci_mcp.settings import Settings
from tests.conftest import all_text, images, open_client, session_of, texts
from tests.local.venvs import make_venv

pytestmark = pytest.mark.anyio


@dataclass
class FakeModel:
    replies: list[str] = field(default_factory=list)
    status: int = 200
    seen: list[dict[str, Any]] = field(default_factory=list)

    async def chat(self, request: Request) -> JSONResponse:
        body = await request.json()
        self.seen.append({"body": body, "auth": request.headers.get("authorization")})
        if self.status != 200:
            return JSONResponse({"error": {"message": "nope", "type": "invalid_request_error"}}, self.status)
        content = self.replies.pop(0)
        return JSONResponse(
            {
                "id": "chatcmpl-1",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body["model"],
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
                ],
            }
        )


@pytest.fixture
def fake_model() -> Iterator[tuple[FakeModel, str]]:
    model = FakeModel()
    app = Starlette(routes=[Route("/v1/chat/completions", model.chat, methods=["POST"])])
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="error"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    yield model, f"http://127.0.0.1:{port}/v1"
    server.should_exit = True
    thread.join(timeout=10)


async def test_a_request_is_turned_into_code_that_runs_and_the_code_is_shown(
    make_settings: Callable[..., Settings], fake_model: tuple[FakeModel, str]
) -> None:
    model, url = fake_model
    model.replies = [
        "Here you go:\n```python\nimport matplotlib.pyplot as plt\ntotal = 6 * 7\nprint(total)\nplt.plot([1, 2])\n```",
        "```python\nprint(total + 1)\n```",
    ]
    settings = make_settings(llm_base_url=url, llm_model="qwen2.5-coder", llm_api_key="sk-test-secret")
    client, store = await open_client(settings)
    async with client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
        assert "natural-language `request` is turned into code" in (tools["run_code_analysis"].description or "")
        first = await client.call_tool("run_code_analysis", {"request": "multiply six by seven and plot a line"})
        assert not first.is_error, all_text(first)
        assert texts(first)[1].startswith("[code]\nimport matplotlib")
        assert "42" in all_text(first) and len(images(first)) == 1
        second = await client.call_tool("run_code_analysis", {"request": "add one", "session_id": session_of(first)})
        assert "43" in all_text(second)
    store.close()
    assert model.seen[0]["body"]["model"] == "qwen2.5-coder"
    assert model.seen[0]["auth"] == "Bearer sk-test-secret"
    prompt = json.dumps(model.seen[1]["body"]["messages"])
    assert "total = 6 * 7" in prompt  # the session's earlier code is context for the next request


async def test_a_refusing_model_endpoint_gives_a_clear_error_without_the_key(
    make_settings: Callable[..., Settings], fake_model: tuple[FakeModel, str]
) -> None:
    model, url = fake_model
    model.status = 401
    settings = make_settings(llm_base_url=url, llm_model="m", llm_api_key="sk-very-secret")
    client, store = await open_client(settings)
    async with client:
        result: Any = await client.call_tool("run_code_analysis", {"request": "anything"})
        assert result.is_error
        text = all_text(result)
        assert "CI_MCP_LLM_API_KEY" in text and "sk-very-secret" not in text
        still = await client.call_tool("run_code_analysis", {"code": "print('code still works')"})
        assert "code still works" in all_text(still)
    store.close()


async def test_without_a_model_a_request_alone_says_to_pass_code(client: Client) -> None:
    result = await client.call_tool("run_code_analysis", {"request": "plot revenue by sector"})
    assert result.is_error and "pass the analysis as `code`" in all_text(result)


async def test_the_code_writing_model_is_told_which_libraries_the_kernel_lacks(
    make_settings: Callable[..., Settings], fake_model: tuple[FakeModel, str], tmp_path: Path
) -> None:
    model, url = fake_model
    model.replies = ["```python\nimport csv\nprint('standard library only')\n```"]
    python = make_venv(tmp_path / "bare-venv", hide=("numpy", "pandas", "matplotlib", "openpyxl"))
    settings = make_settings(llm_base_url=url, llm_model="m", kernel_python=str(python), kernel_pool_size=0)
    client, store = await open_client(settings)
    async with client:
        result = await client.call_tool("run_code_analysis", {"request": "count the rows"})
    store.close()
    assert "standard library only" in all_text(result), all_text(result)
    system = model.seen[0]["body"]["messages"][0]["content"]
    assert "NOT installed: numpy, pandas, matplotlib, openpyxl" in system, system
    assert "with numpy" not in system and "Installed: numpy" not in system, system
