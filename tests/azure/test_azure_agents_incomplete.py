"""A response that ends `incomplete` (e.g. the output-token limit) keeps what it produced: the code's output, the
partial answer and the generated files come back with status `incomplete` and a note that says why."""

from __future__ import annotations

import pytest
from mcp import Client

from tests.azure_emulator.server import Emulator
from tests.azure_emulator.state import ScriptedTurns, Turn
from tests.conftest import all_text, generated_ids, texts

pytestmark = pytest.mark.anyio


async def test_an_incomplete_response_returns_its_output_and_files_with_a_clear_status(
    mcp: Client, emu: Emulator
) -> None:
    emu.state.model = ScriptedTurns(
        Turn("open('/mnt/data/partial.csv', 'w').write('a,b\\n1,2\\n')\nprint('rows written')", "Wrote the rows. " * 5)
    )
    emu.state.faults.incomplete_next_response("max_output_tokens")

    result = await mcp.call_tool("run_code_analysis", {"request": "write the table, then explain it at length"})

    text = all_text(result)
    assert not result.is_error, text
    assert "stopped before it was complete" in texts(result)[0]
    assert "rows written" in text and "Wrote the rows." in text
    assert "partial.csv" in generated_ids(result)
    assert "max_output_tokens" in text and "smaller step" in text
    fetched = await mcp.call_tool("fetch_generated_file", {"file_id": generated_ids(result)["partial.csv"]})
    assert "a,b\n1,2\n" in all_text(fetched)
