"""Pictures for a tool result: checked from their header before any pixel is decoded, then shrunk to fit what
clients accept (Claude Desktop: about 1 MB).

The bytes come from code the server does not trust, and the server is not sandboxed: a few hundred bytes of PNG
can declare 50000 x 50000 pixels (10 GB decoded). So the pixel count is read from the header and checked against
our own limit first; only a picture under it is decoded, and at most `DECODE_SLOTS` at once. Pillow's own
`Image.MAX_IMAGE_PIXELS` check still runs inside `Image.open` (it raises above twice its value); our limit never
exceeds Pillow's, so Pillow's warning between the two is never what decides, and it is silenced here.

Everything here blocks: callers run it off the event loop (`anyio.to_thread`).
"""

from __future__ import annotations

import io
import threading
import warnings
from dataclasses import dataclass

FORMATS = {"PNG": "image/png", "JPEG": "image/jpeg", "GIF": "image/gif", "WEBP": "image/webp"}
DECODE_SLOTS = threading.BoundedSemaphore(2)
"""Decodes at once, whatever the number of concurrent runs and fetches: each may hold up to 4 bytes a pixel."""


@dataclass(frozen=True)
class Preview:
    """What to show for one picture: `data` in `media_type`, or nothing and `refused` saying why."""

    data: bytes
    media_type: str
    shrunk: bool = False
    refused: str = ""


def header_refusal(data: bytes, max_pixels: int) -> str:
    """Why these bytes must not be handed to a client as a picture ("" when they may): not a PNG/JPEG/GIF/WebP
    image, or declaring more than `max_pixels` pixels. Reads the header only; decodes nothing."""
    from PIL import Image, UnidentifiedImageError

    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
    try:
        with Image.open(io.BytesIO(data), formats=tuple(FORMATS)) as img:
            width, height = img.size
    except Image.DecompressionBombError:
        return f"it declares more than {max_pixels:,} pixels"
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        return "it is not a valid PNG, JPEG, GIF or WebP image"
    if width * height > max_pixels:
        return f"it declares {width:,} x {height:,} pixels, more than {max_pixels:,}"
    return ""


def preview(data: bytes, max_bytes: int, max_pixels: int) -> Preview:
    """A picture no larger than `max_bytes` (where that can be done sensibly), or a refusal for the model.

    Refused: bytes that are not a PNG, JPEG, GIF or WebP image, pictures that declare more than `max_pixels`
    pixels (never decoded), and pictures whose data cannot be decoded.
    """
    from PIL import Image, UnidentifiedImageError

    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
    limit = max_pixels if Image.MAX_IMAGE_PIXELS is None else min(max_pixels, Image.MAX_IMAGE_PIXELS)
    not_image = "it is not a valid PNG, JPEG, GIF or WebP image"
    with DECODE_SLOTS:
        try:
            img = Image.open(io.BytesIO(data), formats=tuple(FORMATS))
        except Image.DecompressionBombError:
            return _refused(f"it declares more than {limit:,} pixels, too many to decode for a preview")
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError):
            return _refused(not_image)
        with img:
            width, height = img.size
            if width * height > limit:
                return _refused(f"it is {width:,} x {height:,} pixels, more than the {limit:,} decoded for a preview")
            try:
                img.load()
            except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError):
                return _refused("its image data is damaged or truncated")
            media_type = FORMATS[str(img.format)]
            if len(data) <= max_bytes:
                return Preview(data, media_type)
            work = img.convert("RGBA") if img.mode not in ("RGB", "RGBA", "L", "LA") else img.copy()
        return _shrink(work, len(data), max_bytes)


def _shrink(work: object, size: int, max_bytes: int) -> Preview:
    from PIL import Image

    assert isinstance(work, Image.Image)
    scale = (max_bytes / size) ** 0.5
    out = io.BytesIO()
    for _ in range(8):
        width = max(64, int(work.width * scale))
        height = max(64, int(work.height * scale))
        resized = work.resize((width, height), Image.Resampling.LANCZOS)
        out = io.BytesIO()
        resized.save(out, format="PNG", optimize=True)
        if out.tell() <= max_bytes:
            return Preview(out.getvalue(), "image/png", shrunk=True)
        rgb = resized.convert("RGB")
        out = io.BytesIO()
        rgb.save(out, format="JPEG", quality=80, optimize=True)
        if out.tell() <= max_bytes:
            return Preview(out.getvalue(), "image/jpeg", shrunk=True)
        scale *= 0.7
    return Preview(out.getvalue(), "image/jpeg", shrunk=True)


def _refused(why: str) -> Preview:
    return Preview(b"", "", refused=why)
