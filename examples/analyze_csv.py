"""The Azure code-interpreter walk-through, locally through MCP.

Launches `ci-mcp` over stdio as a desktop client would, uploads the NIFTY 500 quarterly results, asks for a bar
chart of the operating profit of the TRANSPORTATION sector, saves the returned PNG and prints the answer.

    python examples/analyze_csv.py            (or: make demo)
"""

from __future__ import annotations

import base64
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import anyio
from mcp import Client, StdioServerParameters
from mcp_types import ImageContent, TextContent

HERE = Path(__file__).resolve().parent
CSV = HERE / "data" / "nifty_500_quarterly_results.csv"
OUT = Path(os.environ.get("CI_MCP_EXAMPLE_OUT", HERE / "output"))

CODE = """
import pandas as pd
import matplotlib.pyplot as plt

df = pd.read_csv("nifty_500_quarterly_results.csv")
transport = df[df["sector"] == "TRANSPORTATION"].sort_values("operating_profit", ascending=False)
print(transport[["name", "operating_profit"]].to_string(index=False))
print(f"\\nTotal operating profit of the sector: {transport['operating_profit'].sum():,.1f} (INR crore)")

fig, ax = plt.subplots(figsize=(10, 5))
ax.bar(transport["name"], transport["operating_profit"], color="#2f6db5")
ax.set_title("Operating profit, TRANSPORTATION sector (NIFTY 500)")
ax.set_ylabel("Operating profit (INR crore)")
ax.tick_params(axis="x", rotation=45)
plt.setp(ax.get_xticklabels(), ha="right")
fig.tight_layout()
fig.savefig("transportation_operating_profit.png", dpi=120)
plt.close(fig)  # saved already: closing it avoids a second, identical inline figure
"""


async def main() -> None:
    env = dict(os.environ, CI_MCP_ALLOWED_DIRS=str(CSV.parent) + os.pathsep + str(OUT))
    server = StdioServerParameters(command=sys.executable, args=["-m", "ci_mcp"], env=env)
    OUT.mkdir(parents=True, exist_ok=True)
    async with Client(server) as client:
        uploaded = await client.call_tool("upload_file", {"path": str(CSV)})
        print(_text(uploaded.content))
        file_id = (uploaded.meta or {})["ci-mcp/ids"]["files"][0]["file_id"]

        result = await client.call_tool("run_code_analysis", {"code": CODE, "file_ids": [file_id]})
        if result.is_error:
            raise SystemExit(_text(result.content))
        print(_text(result.content))
        pictures = [b for b in result.content if isinstance(b, ImageContent)]
        print(f"\n{len(pictures)} image block(s) came back.")
        if pictures:
            target = OUT / "chart_from_image_block.png"
            target.write_bytes(base64.b64decode(pictures[0].data))
            print(f"Saved the first image block to {target}")

        generated = {f["name"]: f["file_id"] for f in (result.meta or {})["ci-mcp/ids"]["files"]}
        chart_id = generated["transportation_operating_profit.png"]
        fetched = await client.call_tool(
            "fetch_generated_file", {"file_id": chart_id, "save_to": str(OUT), "overwrite": True}
        )
        print(_text(fetched.content))


def _text(blocks: Sequence[object]) -> str:
    return "\n".join(b.text for b in blocks if isinstance(b, TextContent))


if __name__ == "__main__":
    anyio.run(main)
