"""Pictures in results: shrunk to fit what clients accept, refused (never decoded) when they declare too many
pixels or are not pictures, and always kept full size as files."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from mcp import Client
from mcp_types import ImageContent

from ci_mcp.settings import Settings
from tests.conftest import all_text, generated_ids, images, links, texts
from tests.fakes import FakeBackend, Generated, Step
from tests.pictures import declared_png, flat_png, noise_png, size_of
from tests.surface.conftest import connect

pytestmark = pytest.mark.anyio


async def test_a_large_picture_is_shrunk_inline_and_the_original_stays_fetchable(
    make_settings: Callable[..., Settings],
) -> None:
    original = noise_png(300, 300)
    assert len(original) > 200_000
    async with connect(make_settings(inline_image_bytes=80_000)) as (client, backend):
        backend.script(Step(outputs=[Generated("n.png", original)]))
        result = await client.call_tool("run_code_analysis", {"code": "x"})
        (inline,) = images(result)
        assert 0 < len(inline) <= 80_000
        assert size_of(inline)[0] < 300
        fid = generated_ids(result)["n.png"]
        assert f'[image "n.png" = {fid} (shrunk for display; full size: fetch_generated_file {fid})]' in texts(result)
        assert backend.store.read(fid) == original
        fetched = await client.call_tool("fetch_generated_file", {"file_id": fid})
        (shown,) = images(fetched)
        assert len(shown) <= 80_000 and "shrunk to fit the result; pass save_to" in texts(fetched)[0]


async def test_pictures_of_one_run_share_the_inline_budget(make_settings: Callable[..., Settings]) -> None:
    pictures = [noise_png(200, 200, seed) for seed in range(3)]
    async with connect(make_settings(inline_image_bytes=300_000)) as (client, backend):
        backend.script(Step(outputs=[Generated(f"p{i}.png", p) for i, p in enumerate(pictures)]))
        result = await client.call_tool("run_code_analysis", {"code": "x"})
        shown = images(result)
        assert len(shown) == 3 and all(len(s) <= 100_000 for s in shown), [len(s) for s in shown]
        assert sum(len(s) for s in shown) <= 300_000


async def test_a_small_picture_is_shown_as_it_is(client: Client, backend: FakeBackend) -> None:
    png = flat_png(50, 50)
    backend.script(Step(outputs=[Generated("f.png", png)]))
    result = await client.call_tool("run_code_analysis", {"code": "x"})
    assert images(result) == [png]
    assert "shrunk" not in all_text(result)


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (declared_png(50_000, 50_000), "pixels"),
        (declared_png(6_000, 5_000), "more than the 25,000,000 decoded"),
        (b"\x89PNG\r\n\x1a\nnot really", "not a valid PNG, JPEG, GIF or WebP image"),
        (flat_png(100, 100)[:-30], "damaged or truncated"),
    ],
    ids=["pixel-bomb", "over-our-limit", "not-a-picture", "truncated"],
)
async def test_a_picture_that_cannot_be_previewed_is_a_note_and_stays_a_file(
    client: Client, backend: FakeBackend, data: bytes, why: str
) -> None:
    backend.script(Step(outputs=[Generated("bomb.png", data)]))
    result = await client.call_tool("run_code_analysis", {"code": "x"})
    assert not result.is_error and images(result) == []
    fid = generated_ids(result)["bomb.png"]
    note = next(t for t in texts(result) if t.startswith("[no picture"))
    assert note.startswith(f'[no picture for "bomb.png" = {fid}: ') and why in note and "kept as a file" in note
    assert [lk.name for lk in links(result)] == ["bomb.png"]
    fetched = await client.call_tool("fetch_generated_file", {"file_id": fid})
    assert images(fetched) == [] and "no picture shown" in texts(fetched)[0] and why in texts(fetched)[0]
    assert [str(lk.uri) for lk in links(fetched)] == [f"ci-mcp://files/{fid}"]


async def test_fetch_shows_no_picture_past_the_display_limit(make_settings: Callable[..., Settings]) -> None:
    png = flat_png(60, 60)
    async with connect(make_settings(max_display_bytes=len(png) - 1)) as (client, backend):
        backend.script(Step(files=[Generated("big.png", png)]))
        fid = generated_ids(await client.call_tool("run_code_analysis", {"code": "x"}))["big.png"]
        fetched = await client.call_tool("fetch_generated_file", {"file_id": fid})
        assert images(fetched) == []
        assert "CI_MCP_MAX_DISPLAY_BYTES" in texts(fetched)[0]
        assert not any(isinstance(b, ImageContent) for b in fetched.content)
