"""An agent delegating analysis to a ci-mcp server over streamable HTTP, with a bearer token.

Start the server (on this or another machine):

    export CI_MCP_HTTP_TOKENS=agent:$(python -c "import secrets; print(secrets.token_urlsafe(32))")
    ci-mcp serve --transport http            # http://127.0.0.1:8765/mcp

then run the agent with the same token:

    CI_MCP_URL=http://127.0.0.1:8765/mcp CI_MCP_TOKEN=<the token> python examples/agent_delegation.py

It uploads the NIFTY 500 CSV as bytes (the server may be elsewhere), runs two analysis steps in one session (the
second uses a variable from the first), and saves the chart next to this script. Ids are read from each result's
`_meta`, not scraped from its text. Long runs: the client's read timeout is raised above the default 5 s of many
frameworks, because a cold kernel start alone can take seconds.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path

import anyio
import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp_types import CallToolResult, ImageContent, TextContent

HERE = Path(__file__).resolve().parent
CSV = HERE / "data" / "nifty_500_quarterly_results.csv"
OUT = Path(os.environ.get("CI_MCP_EXAMPLE_OUT", HERE / "output"))

STEP_1 = """
import pandas as pd
df = pd.read_csv("nifty_500_quarterly_results.csv")
by_sector = df.groupby("sector")["operating_profit"].sum().sort_values(ascending=False)
print(by_sector.head(5).to_string())
"""

STEP_2 = """
import matplotlib.pyplot as plt
fig, ax = plt.subplots(figsize=(8, 4))
by_sector.head(10).plot.barh(ax=ax, color="#2f6db5")
ax.invert_yaxis()
ax.set_xlabel("Operating profit (INR crore)")
ax.set_title("Top 10 sectors by operating profit (NIFTY 500)")
fig.tight_layout()
"""


def ids(result: CallToolResult) -> dict[str, object]:
    if result.is_error:
        raise SystemExit(text(result))
    return dict((result.meta or {})["ci-mcp/ids"])


def text(result: CallToolResult) -> str:
    return "\n".join(b.text for b in result.content if isinstance(b, TextContent))


async def main() -> None:
    url = os.environ.get("CI_MCP_URL", "http://127.0.0.1:8765/mcp")
    token = os.environ.get("CI_MCP_TOKEN", "")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    http = httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30, read=300))
    async with http, Client(streamable_http_client(url, http_client=http)) as client:
        data = base64.b64encode(CSV.read_bytes()).decode()
        uploaded = await client.call_tool("upload_file", {"content_base64": data, "filename": CSV.name})
        file_id = ids(uploaded)["files"][0]["file_id"]  # type: ignore[index]
        print(text(uploaded))

        first = await client.call_tool("run_code_analysis", {"code": STEP_1, "file_ids": [file_id]})
        session_id = ids(first)["session_id"]
        print(text(first))

        second = await client.call_tool("run_code_analysis", {"code": STEP_2, "session_id": session_id})
        ids(second)
        charts = [b for b in second.content if isinstance(b, ImageContent)]
        if not charts:
            raise SystemExit("no chart came back:\n" + text(second))
        OUT.mkdir(parents=True, exist_ok=True)
        target = OUT / "sectors_by_operating_profit.png"
        target.write_bytes(base64.b64decode(charts[0].data))
        print(f"Saved the chart to {target} (session {session_id})")


if __name__ == "__main__":
    anyio.run(main)
