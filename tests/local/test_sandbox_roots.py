"""The directories a kernel's Python needs are bound into the sandbox; a listed directory that does not exist is not.

Debian's site.py lists `lib/python3/dist-packages` for a venv made on /usr/bin/python3 (as `uv run` makes one), and
bwrap refuses to start with a bind whose source is missing.
"""

from __future__ import annotations

from pathlib import Path

from ci_mcp.backends.local.interpreter import _mounts


def test_site_directories_that_do_not_exist_are_not_mounted(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    site = venv / "lib" / "python3.11" / "site-packages"
    site.mkdir(parents=True)
    missing = tmp_path / "elsewhere" / "lib" / "python3" / "dist-packages"

    mounts = _mounts([site, missing], not_containing=(), not_inside=())

    assert site in mounts
    assert missing not in mounts and not any(m.is_relative_to(tmp_path / "elsewhere") for m in mounts)
