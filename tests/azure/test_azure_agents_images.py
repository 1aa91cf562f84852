"""Images the code displayed (`code_interpreter_call.outputs` of type image): a `data:` URL is decoded, a
container-file reference is downloaded, and any other link is reported instead of vanishing."""

from __future__ import annotations

import pytest
from mcp import Client
from mcp_types import CallToolResult, TextContent

from tests.azure_emulator.server import Emulator
from tests.conftest import all_text, images

pytestmark = pytest.mark.anyio

SHOW = (
    "import io\nimport matplotlib.pyplot as plt\nfrom IPython.display import Image, display\n"
    "fig, ax = plt.subplots()\nax.plot([1, 3, 2])\nbuf = io.BytesIO()\nfig.savefig(buf, format='png')\n"
    "display(Image(data=buf.getvalue()))\nprint('shown')"
)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
LIST = "GET /openai/v1/containers/{container_id}/files"


def image_then_answer(result: CallToolResult) -> tuple[int, int]:
    """Positions of the first image block and of the agent's answer in the result."""
    kinds = [b.type if not isinstance(b, TextContent) else b.text for b in result.content]
    return kinds.index("image"), next(i for i, k in enumerate(kinds) if k.startswith("I ran the code."))


@pytest.mark.parametrize("style", ["data", "container", "sandbox"])
async def test_a_displayed_image_comes_back_where_it_was_displayed_whatever_its_url_form(
    mcp: Client, emu: Emulator, style: str
) -> None:
    emu.state.image_urls = style

    result = await mcp.call_tool("run_code_analysis", {"code": SHOW})

    text = all_text(result)
    assert not result.is_error, text
    pictures = images(result)
    assert len(pictures) == 1 and pictures[0].startswith(PNG_MAGIC), text
    image_at, answer_at = image_then_answer(result)
    assert image_at < answer_at and "not shown" not in text


async def test_a_displayed_container_file_is_downloaded_by_its_id_even_when_listing_fails(
    mcp: Client, emu: Emulator
) -> None:
    emu.state.image_urls = "container"
    emu.state.faults.push(LIST, status=500, retry_after=None, times=10)

    result = await mcp.call_tool("run_code_analysis", {"code": SHOW})

    assert not result.is_error, all_text(result)
    assert len(images(result)) == 1 and images(result)[0].startswith(PNG_MAGIC)


async def test_a_displayed_image_given_only_as_an_outside_link_is_reported_not_dropped(
    mcp: Client, emu: Emulator
) -> None:
    emu.state.image_urls = "remote"

    result = await mcp.call_tool("run_code_analysis", {"code": SHOW})

    text = all_text(result)
    assert not result.is_error and images(result) == []
    assert "displayed an image" in text and "https://images.example.invalid/" in text
    assert "not-for-the-model" not in text and "savefig" in text
