"""The real thing: `ci-mcp` launched as a subprocess over stdio, driven by the MCP client as a desktop app would."""

from __future__ import annotations

import base64
import os
import sys
from pathlib import Path

import pytest
from mcp import Client, StdioServerParameters

from tests.conftest import NIFTY_CSV, REPO, all_text, generated_ids, images, seed_font_cache, session_of, uploaded_id

pytestmark = pytest.mark.anyio


async def test_a_desktop_client_uploads_analyses_and_fetches_over_stdio(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    (work / NIFTY_CSV.name).write_bytes(NIFTY_CSV.read_bytes())
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(tmp_path),
        "CI_MCP_DATA_DIR": str(seed_font_cache(tmp_path / "data")),
        "CI_MCP_ALLOWED_DIRS": str(work),
        "PYTHONPATH": str(REPO / "src"),  # the code under test, not whatever ci_mcp the interpreter has installed
    }
    params = StdioServerParameters(command=sys.executable, args=["-m", "ci_mcp"], env=env, cwd=str(work))
    async with Client(params) as client:
        names = {t.name for t in (await client.list_tools()).tools}
        assert {"upload_file", "run_code_analysis", "fetch_generated_file"} <= names
        fid = uploaded_id(await client.call_tool("upload_file", {"path": str(work / NIFTY_CSV.name)}))
        code = (
            "import pandas as pd\nimport matplotlib.pyplot as plt\n"
            f"df = pd.read_csv('{NIFTY_CSV.name}')\n"
            "t = df[df.sector == 'TRANSPORTATION']\n"
            "t.plot.bar(x='name', y='operating_profit'); plt.tight_layout(); plt.savefig('transport.png')\n"
            "print(t.operating_profit.max())"
        )
        result = await client.call_tool("run_code_analysis", {"code": code, "file_ids": [fid]})
        assert not result.is_error, all_text(result)
        assert "3664.0" in all_text(result)
        pictures = images(result)
        assert len(pictures) == 2 and all(p.startswith(b"\x89PNG") for p in pictures)  # the figure and the file
        sid = session_of(result)
        chart = generated_ids(result)["transport.png"]
        saved = await client.call_tool("fetch_generated_file", {"file_id": chart, "save_to": str(work)})
        assert not saved.is_error, all_text(saved)
        assert (work / "transport.png").read_bytes().startswith(b"\x89PNG")
        more = await client.call_tool("run_code_analysis", {"code": "print(len(df))", "session_id": sid})
        assert "501" in all_text(more)
        inline = base64.b64encode(b"q\n1\n").decode()
        assert not (await client.call_tool("upload_file", {"content_base64": inline, "filename": "q.csv"})).is_error


def test_the_readme_walk_through_make_demo_runs_and_saves_the_chart(tmp_path: Path) -> None:
    """`make demo` runs examples/analyze_csv.py: it must keep working as the result format evolves."""
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[2]
    out = tmp_path / "out"
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(tmp_path),
        "PYTHONPATH": str(repo / "src"),
        "CI_MCP_DATA_DIR": str(seed_font_cache(tmp_path / "data")),
        "CI_MCP_EXAMPLE_OUT": str(out),
    }
    done = subprocess.run(
        [sys.executable, str(repo / "examples" / "analyze_csv.py")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Adani Ports" in done.stdout
    assert (out / "transportation_operating_profit.png").read_bytes().startswith(b"\x89PNG")
    assert (out / "chart_from_image_block.png").read_bytes().startswith(b"\x89PNG")
