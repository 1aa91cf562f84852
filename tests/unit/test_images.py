"""src/ci_mcp/images.py: previews checked from the header before any pixel is decoded, then shrunk to fit."""

from __future__ import annotations

import io

import pytest
from PIL import Image, ImageFile

from ci_mcp import images
from tests.pictures import declared_png, flat_png, noise_png, size_of

MAX_PIXELS = 25_000_000


def encoded(img: Image.Image, fmt: str) -> bytes:
    out = io.BytesIO()
    img.save(out, format=fmt)
    return out.getvalue()


@pytest.mark.parametrize(("fmt", "media_type"), [("PNG", "image/png"), ("JPEG", "image/jpeg"), ("GIF", "image/gif")])
def test_a_picture_within_the_budget_is_shown_as_it_is(fmt: str, media_type: str) -> None:
    data = encoded(Image.new("RGB", (30, 20), (10, 200, 10)), fmt)
    shown = images.preview(data, len(data), MAX_PIXELS)
    assert shown == images.Preview(data, media_type)


def test_a_picture_declaring_too_many_pixels_is_refused_from_its_header_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    decoded: list[object] = []
    real_load = ImageFile.ImageFile.load

    def spy(self: ImageFile.ImageFile) -> object:
        decoded.append(self.size)
        return real_load(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", spy)
    shown = images.preview(declared_png(2_001, 1_000), 10**9, 2_000_000)
    assert shown.refused == "it is 2,001 x 1,000 pixels, more than the 2,000,000 decoded for a preview"
    assert shown.data == b"" and decoded == []
    at_limit = images.preview(declared_png(2_000, 1_000), 10**9, 2_000_000)  # not over: decoding is tried
    assert decoded == [(2_000, 1_000)] and at_limit.refused == "its image data is damaged or truncated"


def test_a_decompression_bomb_is_refused_before_pillow_decodes_it() -> None:
    shown = images.preview(declared_png(50_000, 50_000), 10**9, MAX_PIXELS)
    assert shown.refused == "it declares more than 25,000,000 pixels, too many to decode for a preview"
    assert shown.data == b""


def test_pillows_own_limit_caps_ours(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000)
    shown = images.preview(flat_png(40, 40), 10**9, MAX_PIXELS)
    assert shown.refused == "it is 40 x 40 pixels, more than the 1,000 decoded for a preview"


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"", "it is not a valid PNG, JPEG, GIF or WebP image"),
        (b"<svg xmlns='http://www.w3.org/2000/svg'/>", "it is not a valid PNG, JPEG, GIF or WebP image"),
        (encoded(Image.new("RGB", (8, 8)), "BMP"), "it is not a valid PNG, JPEG, GIF or WebP image"),
        (flat_png(100, 100)[:-30], "its image data is damaged or truncated"),
    ],
    ids=["empty", "svg", "bmp", "truncated"],
)
def test_what_is_not_a_usable_picture_is_refused(data: bytes, why: str) -> None:
    assert images.preview(data, 10**9, MAX_PIXELS).refused == why


def test_a_large_picture_is_shrunk_under_the_budget() -> None:
    data = noise_png(400, 300)
    shown = images.preview(data, 60_000, MAX_PIXELS)
    assert shown.shrunk and not shown.refused
    assert 0 < len(shown.data) <= 60_000
    assert shown.media_type in ("image/png", "image/jpeg")
    width, height = size_of(shown.data)
    assert width < 400 and abs(width / height - 4 / 3) < 0.05  # the aspect ratio is kept


def test_a_picture_that_compresses_well_stays_a_png_when_shrunk() -> None:
    big = Image.new("RGB", (2000, 2000), (255, 255, 255))
    for x in range(0, 2000, 50):
        big.paste((0, 0, 0), (x, 0, x + 3, 2000))
    data = encoded(big, "PNG")
    shown = images.preview(data, len(data) // 2, MAX_PIXELS)
    assert shown.shrunk and shown.media_type == "image/png" and len(shown.data) <= len(data) // 2


@pytest.mark.parametrize("mode", ["P", "RGBA", "L", "CMYK"])
def test_every_colour_mode_can_be_shrunk(mode: str) -> None:
    noise = Image.open(io.BytesIO(noise_png(300, 300))).convert(mode)
    data = encoded(noise, "JPEG" if mode == "CMYK" else "PNG")
    shown = images.preview(data, len(data) // 3, MAX_PIXELS)
    assert shown.shrunk and len(shown.data) <= len(data) // 3
    assert size_of(shown.data)[0] >= 64


def test_a_budget_too_small_for_any_picture_still_gives_the_smallest_one() -> None:
    shown = images.preview(noise_png(300, 300), 100, MAX_PIXELS)
    assert shown.shrunk and shown.media_type == "image/jpeg"
    assert size_of(shown.data) == (64, 64)  # never smaller than 64 x 64
