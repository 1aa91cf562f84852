"""The directories a kernel's Python needs are bound into the sandbox; a listed directory that does not exist is not.

Debian's site.py lists `lib/python3/dist-packages` for a venv made on /usr/bin/python3 (as `uv run` makes one), and
bwrap refuses to start with a bind whose source is missing.
"""

from __future__ import annotations

import stat
from pathlib import Path

from ci_mcp.backends.local.sandbox import python_roots


def test_python_roots_leave_out_site_directories_that_do_not_exist(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    site = venv / "lib" / "python3.11" / "site-packages"
    site.mkdir(parents=True)
    missing = venv / "lib" / "python3" / "dist-packages"
    interpreter = venv / "bin" / "python"
    interpreter.parent.mkdir()
    # a stand-in interpreter that answers the probe the way a Debian venv does
    interpreter.write_text(f"#!/bin/sh\nprintf '%s\\n' {venv} /usr {site} {missing}\n")
    interpreter.chmod(interpreter.stat().st_mode | stat.S_IXUSR)

    roots = python_roots(str(interpreter))

    assert site in roots and venv in roots
    assert missing not in roots
