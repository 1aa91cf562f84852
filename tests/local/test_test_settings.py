"""Test settings never come from the developer's shell (`CI_MCP_*`, `AZURE_*`)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable

import pytest

from ci_mcp.settings import Settings
from tests.conftest import REPO


def test_settings_in_the_environment_do_not_reach_test_settings(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CI_MCP_BACKEND", "bogus")
    monkeypatch.setenv("CI_MCP_RUN_TIMEOUT_SECONDS", "soon")
    monkeypatch.setenv("AZURE_AI_PROJECT_ENDPOINT", "https://shell.example/api/projects/p")
    settings = make_settings()
    assert settings.backend == "local"
    assert settings.run_timeout_seconds == 60
    assert settings.azure_endpoint is None


def test_the_shell_environment_is_cleared_for_every_test() -> None:
    assert not [n for n in os.environ if n.startswith(("CI_MCP_", "AZURE_"))]


def test_a_developer_shell_with_settings_does_not_change_the_tests() -> None:
    """Run the two tests above in a pytest whose own environment has CI_MCP_* and AZURE_* set."""
    env = os.environ | {
        "CI_MCP_BACKEND": "bogus",
        "CI_MCP_DATA_DIR": "/nonexistent/ci-mcp",
        "AZURE_AI_PROJECT_ENDPOINT": "https://shell.example/api/projects/p",
        "PYTHONPATH": str(REPO / "src") + os.pathsep + str(REPO),
    }
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__, "-k", "not developer_shell"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 passed" in done.stdout, done.stdout
