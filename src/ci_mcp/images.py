"""Shrinking pictures so a tool result stays under what clients accept (Claude Desktop: about 1 MB)."""

from __future__ import annotations

import io


def fit_image(data: bytes, max_bytes: int) -> tuple[bytes, str, bool]:
    """Return (bytes, media type, shrunk?) no larger than `max_bytes` where that can be done sensibly."""
    if len(data) <= max_bytes:
        return data, _media_type(data), False
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        img.load()
        work = img.convert("RGBA") if img.mode not in ("RGB", "RGBA", "L", "LA") else img.copy()
    scale = (max_bytes / len(data)) ** 0.5
    for _ in range(8):
        width = max(64, int(work.width * scale))
        height = max(64, int(work.height * scale))
        resized = work.resize((width, height), Image.Resampling.LANCZOS)
        out = io.BytesIO()
        resized.save(out, format="PNG", optimize=True)
        if out.tell() <= max_bytes:
            return out.getvalue(), "image/png", True
        rgb = resized.convert("RGB")
        out = io.BytesIO()
        rgb.save(out, format="JPEG", quality=80, optimize=True)
        if out.tell() <= max_bytes:
            return out.getvalue(), "image/jpeg", True
        scale *= 0.7
    return out.getvalue(), "image/jpeg", True


def _media_type(data: bytes) -> str:
    if data.startswith(b"\x89PNG"):
        return "image/png"
    if data.startswith(b"\xff\xd8"):
        return "image/jpeg"
    if data.startswith(b"GIF8"):
        return "image/gif"
    if data[8:12] == b"WEBP":
        return "image/webp"
    return "application/octet-stream"
