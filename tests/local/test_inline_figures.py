"""Inline figures from one draw (issue 12): the picture is the one `savefig(bbox_inches="tight")` makes, labels
inside, and a figure whose content reaches past its edges is still saved whole."""

from __future__ import annotations

import io

import pytest
from mcp import Client
from PIL import Image

from tests.conftest import all_text, images, session_of

pytestmark = pytest.mark.anyio

TIGHT = """
import io, matplotlib.pyplot as plt
from PIL import Image
fig, ax = plt.subplots()
ax.bar(["alpha", "beta", "gamma"], [3, 1, 2]); ax.set_title("a title at the top"); ax.set_xlabel("a label below")
{extra}
buf = io.BytesIO(); fig.savefig(buf, format="png", bbox_inches="tight")
print("tight", *Image.open(buf).size, "figure", *(fig.get_size_inches() * fig.dpi).round().astype(int))
"""


def sizes(text: str) -> tuple[tuple[int, int], tuple[int, int]]:
    line = next(line for line in text.splitlines() if line.startswith("tight "))
    _, w, h, _, fw, fh = line.split()
    return (int(w), int(h)), (int(fw), int(fh))


def close_to(a: tuple[int, int], b: tuple[int, int]) -> bool:
    return abs(a[0] - b[0]) <= 2 and abs(a[1] - b[1]) <= 2


async def test_an_inline_figure_is_the_tight_picture_of_the_figure(client: Client) -> None:
    result = await client.call_tool("run_code_analysis", {"code": TIGHT.format(extra="")})
    (tight, figure), (png,) = sizes(all_text(result)), images(result)
    shown = Image.open(io.BytesIO(png))
    assert close_to(shown.size, tight), (shown.size, tight)
    assert shown.size[0] < figure[0]  # cropped to what is drawn, as savefig's tight box does
    # The pad around the drawing is the figure's background, the drawing itself is not cut: its edges are white.
    rgb = shown.convert("RGB")
    edge = [rgb.getpixel((x, 0)) for x in range(rgb.size[0])] + [rgb.getpixel((0, y)) for y in range(rgb.size[1])]
    assert set(edge) == {(255, 255, 255)}


async def test_a_figure_drawing_past_its_edges_is_shown_whole(client: Client) -> None:
    extra = "fig.text(1.15, 0.5, 'a note right of the figure', ha='left')"
    result = await client.call_tool("run_code_analysis", {"code": TIGHT.format(extra=extra)})
    (tight, figure), (png,) = sizes(all_text(result)), images(result)
    shown = Image.open(io.BytesIO(png))
    assert close_to(shown.size, tight), (shown.size, tight)
    assert shown.size[0] > figure[0]  # the note is in the picture


async def test_an_inline_figure_is_drawn_once(client: Client) -> None:
    code = (
        "import matplotlib.pyplot as plt\ndraws = []\nfig, ax = plt.subplots()\nax.plot([1, 3, 2])\n"
        "ax.set_title('drawn')\nfig.canvas.mpl_connect('draw_event', lambda event: draws.append(1))"
    )
    shown = await client.call_tool("run_code_analysis", {"code": code})
    assert len(images(shown)) == 1
    counted = await client.call_tool(
        "run_code_analysis", {"code": "print('draws', len(draws))", "session_id": session_of(shown)}
    )
    assert "draws 1" in all_text(counted), all_text(counted)
