"""The original Azure classic-agents walk-through, served by the azure-classic backend over the emulator.

Upload the NIFTY 500 CSV with purpose agents, ask for "a bar chart in the TRANSPORTATION sector for the operating
profit", and get a real PNG back; the scripted model plays the part of the agent writing the pandas code.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from ci_mcp.backends.azure.classic.backend import ClassicAgentsBackend
from ci_mcp.models import ImageOutput, RunRequest, TextOutput
from tests.azure_classic.conftest import Progress
from tests.azure_emulator.server import Emulator
from tests.azure_emulator.state import ScriptedTurns, Turn
from tests.conftest import files_of

pytestmark = pytest.mark.anyio

REPO = Path(__file__).resolve().parents[2]
NIFTY = REPO / "examples" / "data" / "nifty_500_quarterly_results.csv"
REQUEST = "Create a bar chart in the TRANSPORTATION sector for the operating profit and save it as a PNG file."

AGENT_CODE = """
import pandas as pd
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
from IPython.display import Image, display

df = pd.read_csv("/mnt/data/nifty_500_quarterly_results.csv")
transport = df[df["sector"] == "TRANSPORTATION"].sort_values("operating_profit", ascending=False)
print(f"{len(transport)} companies in TRANSPORTATION")
fig, ax = plt.subplots(figsize=(10, 6))
ax.bar(transport["name"], transport["operating_profit"], color="steelblue")
ax.set_title("Operating profit, TRANSPORTATION sector")
ax.set_ylabel("Operating profit")
plt.xticks(rotation=45, ha="right")
fig.tight_layout()
fig.savefig("/mnt/data/transportation_operating_profit.png", dpi=100)
display(Image(filename="/mnt/data/transportation_operating_profit.png"))
"""


@pytest.fixture
def nifty_csv() -> Path:
    return NIFTY


async def test_the_walkthrough_turns_the_nifty_csv_into_a_transportation_bar_chart(
    backend: ClassicAgentsBackend, emulator: Emulator, progress: Progress, nifty_csv: Path
) -> None:
    emulator.state.model = ScriptedTurns(
        Turn(AGENT_CODE, "{stdout}Here is the bar chart of operating profit in the TRANSPORTATION sector.")
    )
    mark = emulator.state.mark()

    upload = await files_of(backend).upload(nifty_csv.name, nifty_csv)
    result = await backend.run(
        RunRequest(session_id=None, code=None, request=REQUEST, file_ids=(upload.file_id,)), progress
    )

    message, file_names = emulator.state.model_calls[-1]
    assert message.startswith(REQUEST)
    assert file_names == ["nifty_500_quarterly_results.csv"]
    assert result.status == "ok"
    texts = {o.kind: o.text for o in result.outputs if isinstance(o, TextOutput)}
    assert "9 companies in TRANSPORTATION" in texts["stdout"]
    assert "bar chart of operating profit" in texts["answer"]
    pictures = [o for o in result.outputs if isinstance(o, ImageOutput)]
    assert pictures
    with Image.open(io.BytesIO(pictures[0].data)) as chart:
        assert chart.format == "PNG" and chart.size == (1000, 600)
    chart_file = next(f for f in result.generated_files if f.name == "transportation_operating_profit.png")
    assert chart_file.media_type == "image/png"
    assert (await files_of(backend).path(chart_file.file_id)).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    routes = [r.route for r in emulator.state.requests_since(mark)]
    assert routes.count("POST /files") == 1
    assert routes.count("POST /threads") == 1
    assert routes.count("POST /threads/{thread_id}/messages") == 1
    assert routes.count("POST /threads/{thread_id}/runs") == 1
    assert "GET /threads/{thread_id}/runs/{run_id}" not in routes  # streamed, never polled
    uploaded = [f for f in emulator.state.files.values() if f.filename == nifty_csv.name]
    assert uploaded[-1].purpose == "assistants" and uploaded[-1].data == nifty_csv.read_bytes()
