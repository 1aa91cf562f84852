"""`ci-mcp --version` answers without importing the heavy parts (the MCP SDK, pydantic-settings, the backends)."""

from __future__ import annotations

import os
import subprocess
import sys

from ci_mcp import __version__
from tests.conftest import REPO

HEAVY = ("mcp", "pydantic_settings", "pydantic", "anyio", "ci_mcp.backends", "ci_mcp.server", "ci_mcp.settings")


def imported_modules(*args: str) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    """Run `python -X importtime -m ci_mcp ARGS` and return the names of every module it imported."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "ci_mcp", *args],
        env={"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(REPO / "src")},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    names = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}
    return done, names


def test_version_prints_the_version_without_importing_the_sdk_settings_or_backends() -> None:
    done, names = imported_modules("--version")
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == f"ci-mcp {__version__}"
    assert "ci_mcp.cli" in names  # the measurement saw the command line module load
    heavy = sorted(n for n in names if n.split(".")[0] in HEAVY or n.startswith(HEAVY))
    assert heavy == [], heavy
