"""Pictures for tests: real ones of a chosen size and noise, and headers that declare any size (no pixels)."""

from __future__ import annotations

import io
import random
import struct
import zlib


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def declared_png(width: int, height: int) -> bytes:
    """A PNG whose header declares `width` x `height` RGB pixels, with one tiny compressed row of data: decoding it
    would allocate the declared size (or fail as truncated), so only a header check may look at it."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(b"\x00" * 16))
        + _chunk(b"IEND", b"")
    )


def noise_png(width: int, height: int, seed: int = 0) -> bytes:
    """A PNG of random pixels: it barely compresses, so its size is about 3 bytes a pixel."""
    from PIL import Image

    rng = random.Random(seed)
    img = Image.frombytes("RGB", (width, height), rng.randbytes(width * height * 3))
    out = io.BytesIO()
    img.save(out, format="PNG")
    return out.getvalue()


def flat_png(width: int, height: int, colour: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    """A small PNG of one colour."""
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(out, format="PNG")
    return out.getvalue()


def size_of(data: bytes) -> tuple[int, int]:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        return img.size
