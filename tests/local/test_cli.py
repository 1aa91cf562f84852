"""The command line: doctor, run, and start-up configuration errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import NIFTY_CSV


def ci_mcp(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ci_mcp", *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=120
    )


def base_env(tmp_path: Path) -> dict[str, str]:
    return {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path), "CI_MCP_DATA_DIR": str(tmp_path / "data")}


def test_doctor_checks_the_kernel_and_the_sandbox(tmp_path: Path) -> None:
    done = ci_mcp("doctor", env=base_env(tmp_path), cwd=tmp_path)
    assert "kernel" in done.stdout and "started and ran code" in done.stdout, done.stdout + done.stderr
    assert "analysis libs" in done.stdout


def test_run_writes_the_chart_and_prints_the_answer(tmp_path: Path) -> None:
    code = (
        "import pandas as pd, matplotlib.pyplot as plt\n"
        f"df = pd.read_csv('{NIFTY_CSV.name}')\n"
        "df[df.sector == 'TRANSPORTATION'].plot.bar(x='name', y='operating_profit')\n"
        "print('rows', len(df))"
    )
    out = tmp_path / "out"
    done = ci_mcp("run", str(NIFTY_CSV), "--code", code, "--out", str(out), env=base_env(tmp_path), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "rows 501" in done.stdout
    assert (out / "figure-1.png").read_bytes().startswith(b"\x89PNG")


def test_the_retired_hub_connection_string_fails_at_start_with_the_endpoint_format(tmp_path: Path) -> None:
    env = base_env(tmp_path) | {
        "CI_MCP_BACKEND": "azure",
        "PROJECT_CONNECTION_STRING": "eastus.api.azureml.ms;sub;rg;proj",
    }
    done = ci_mcp("serve", env=env, cwd=tmp_path)
    assert done.returncode == 2
    assert "services.ai.azure.com/api/projects/" in done.stderr
    assert "sub;rg" not in done.stderr  # the old secret-bearing string is not echoed


def test_a_bad_setting_is_named_in_one_line_with_exit_code_2(tmp_path: Path) -> None:
    done = ci_mcp("serve", env=base_env(tmp_path) | {"CI_MCP_RUN_TIMEOUT_SECONDS": "soon"}, cwd=tmp_path)
    assert done.returncode == 2
    assert "CI_MCP_RUN_TIMEOUT_SECONDS" in done.stderr and len(done.stderr.strip().splitlines()) == 1
