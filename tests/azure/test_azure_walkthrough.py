"""The README walk-through on the azure backend: upload the Nifty 500 CSV, ask for a chart, get a PNG back."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from ci_mcp.backends.azure.agents.backend import AzureAgentsBackend
from ci_mcp.models import ImageOutput, RunRequest, TextOutput
from tests.azure.conftest import ProgressLog
from tests.azure_emulator.scripted import nifty_chart_model
from tests.azure_emulator.server import Emulator
from tests.conftest import files_of

pytestmark = pytest.mark.anyio

NIFTY_CSV = Path(__file__).resolve().parents[2] / "examples" / "data" / "nifty_500_quarterly_results.csv"


async def test_a_bar_chart_of_transportation_operating_profit_comes_back_as_a_png(
    backend: AzureAgentsBackend, emu: Emulator
) -> None:
    emu.state.model = nifty_chart_model
    csv = await files_of(backend).upload(NIFTY_CSV.name, NIFTY_CSV)

    result = await backend.run(
        RunRequest(None, None, "Make a bar chart of operating profit in the TRANSPORTATION sector.", (csv.file_id,)),
        ProgressLog(),
    )

    assert result.status == "ok"
    (image,) = [o for o in result.outputs if isinstance(o, ImageOutput)]
    assert image.file.name == "transportation_operating_profit.png"
    with Image.open(io.BytesIO(image.data)) as png:
        assert png.format == "PNG" and png.size == (1000, 500)
    answer = next(o.text for o in result.outputs if isinstance(o, TextOutput) and o.kind == "answer")
    assert "Adani Ports" in answer and "InterGlobe Aviation" in answer
    code = next(o.text for o in result.outputs if isinstance(o, TextOutput) and o.kind == "code")
    assert f"/mnt/data/{NIFTY_CSV.name}" in code
    assert emu.state.model_calls[-1][1] == [NIFTY_CSV.name]
