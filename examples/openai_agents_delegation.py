"""ci-mcp as the code interpreter of an OpenAI Agents SDK agent (`pip install openai-agents`), over HTTP.

Start `ci-mcp serve --transport http` with CI_MCP_HTTP_TOKENS set (see examples/agent_delegation.py), then:

    CI_MCP_URL=http://127.0.0.1:8765/mcp CI_MCP_TOKEN=<the token> OPENAI_API_KEY=... \
        python examples/openai_agents_delegation.py "Which sector has the highest operating profit?"

Without OPENAI_API_KEY it only connects and lists the tools the agent would get, and runs one step itself.
`client_session_timeout_seconds` is raised from the SDK's default of 5 s: a cold kernel start can take longer.
"""

from __future__ import annotations

import base64
import os
import sys
from pathlib import Path

import anyio
from agents.mcp import MCPServerStreamableHttp

CSV = Path(__file__).resolve().parent / "data" / "nifty_500_quarterly_results.csv"


async def main(question: str) -> None:
    token = os.environ.get("CI_MCP_TOKEN", "")
    server = MCPServerStreamableHttp(
        name="ci-mcp",
        params={
            "url": os.environ.get("CI_MCP_URL", "http://127.0.0.1:8765/mcp"),
            "headers": {"Authorization": f"Bearer {token}"} if token else {},
            "timeout": 30,
            "sse_read_timeout": 300,
        },
        client_session_timeout_seconds=300,
        cache_tools_list=True,
    )
    async with server:
        tools = await server.list_tools()
        print("tools:", ", ".join(t.name for t in tools))
        data = base64.b64encode(CSV.read_bytes()).decode()
        uploaded = await server.call_tool("upload_file", {"content_base64": data, "filename": CSV.name})
        file_id = (uploaded.meta or {})["ci-mcp/ids"]["files"][0]["file_id"]
        if not os.environ.get("OPENAI_API_KEY"):
            step = await server.call_tool(
                "run_code_analysis",
                {
                    "code": "import pandas as pd\nprint(pd.read_csv('nifty_500_quarterly_results.csv').shape)",
                    "file_ids": [file_id],
                },
            )
            print(step.content[1].text if len(step.content) > 1 else step.content[0].text)  # type: ignore[union-attr]
            return
        from agents import Agent, Runner

        agent = Agent(
            name="analyst",
            instructions=(
                f"Answer with the code interpreter. The data is uploaded as file id {file_id}: pass it in "
                "file_ids to run_code_analysis, and keep the session_id for follow-up steps."
            ),
            mcp_servers=[server],
        )
        result = await Runner.run(agent, question)
        print(result.final_output)


if __name__ == "__main__":
    anyio.run(main, " ".join(sys.argv[1:]) or "Which sector has the highest total operating profit?")
