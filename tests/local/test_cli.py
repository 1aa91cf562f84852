"""The command line: doctor, run, and start-up configuration errors."""

from __future__ import annotations

import os
import queue
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from ci_mcp.backends.local import cgroups, sandbox
from tests.conftest import NIFTY_CSV, REPO, seed_font_cache
from tests.local.venvs import make_venv


def ci_mcp(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ci_mcp", *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=120
    )


def base_env(tmp_path: Path) -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", ""),
        "PYTHONPATH": str(REPO / "src"),  # the code under test, not whatever ci_mcp the interpreter has installed
        "HOME": str(tmp_path),
        "CI_MCP_DATA_DIR": str(seed_font_cache(tmp_path / "data")),
        # The flags and messages are the subject: no spare kernels, no libraries imported before the code asks (the
        # default start is tests/local/test_stdio_e2e.py's).
        "CI_MCP_KERNEL_POOL_SIZE": "0",
        "CI_MCP_KERNEL_PRELOAD": "false",
    }


def doctor_lines(stdout: str) -> dict[str, str]:
    """check name -> 'ok' or 'FAIL', from the doctor's table."""
    names = ("backend", "data dir", "sandbox", "kernel", "analysis libs", "no network", "user")
    found = {}
    for line in stdout.splitlines():
        status, _, rest = line.partition(" ")
        name = next((n for n in names if rest.strip().startswith(n + " ")), None)
        if status in ("ok", "FAIL") and name:
            found[name] = status
    return found


def test_doctor_checks_the_kernel_and_the_sandbox(tmp_path: Path) -> None:
    done = ci_mcp("doctor", env=base_env(tmp_path), cwd=tmp_path)
    report = done.stdout + done.stderr
    assert "started and ran code" in done.stdout, report
    checks = doctor_lines(done.stdout)
    must_pass = ["backend", "data dir", "kernel", "analysis libs"]
    if sandbox.bwrap_works()[0]:
        must_pass += ["sandbox", "no network"]
    assert {name: checks.get(name) for name in must_pass} == dict.fromkeys(must_pass, "ok"), report
    if sandbox.bwrap_works()[0]:
        assert done.returncode == 0 and "All checks passed." in done.stdout, report
        assert "forked from the preloaded, sandboxed zygote" in done.stdout, report
    assert cgroups.layout().describe() in done.stdout, report  # which cgroup version does what, or that none can


def test_global_flags_are_accepted_after_the_subcommand(tmp_path: Path) -> None:
    done = ci_mcp("doctor", "--backend", "azure", env=base_env(tmp_path), cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "CI_MCP_BACKEND=azure needs AZURE_AI_PROJECT_ENDPOINT" in done.stderr
    data = tmp_path / "elsewhere"
    done = ci_mcp("run", "--code", "print(1)", "--data-dir", str(data), env=base_env(tmp_path), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (data / "meta.sqlite3").exists()


@pytest.mark.parametrize("level", ["debug", "DEBUG", "Info"])
def test_the_log_level_is_accepted_in_any_case(tmp_path: Path, level: str) -> None:
    env = base_env(tmp_path) | {"CI_MCP_LOG_LEVEL": level}
    done = ci_mcp("run", "--code", "print(6 * 7)", env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "42" in done.stdout


@pytest.mark.parametrize("what", ["missing", "directory"])
def test_run_with_a_missing_path_or_a_directory_is_one_line(tmp_path: Path, what: str) -> None:
    target = tmp_path / "nope.csv" if what == "missing" else tmp_path
    done = ci_mcp("run", str(target), "--code", "print(1)", env=base_env(tmp_path), cwd=tmp_path)
    assert done.returncode != 0
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr, done.stderr
    assert str(target) in done.stderr
    done = ci_mcp("run", "--code-file", str(target), env=base_env(tmp_path), cwd=tmp_path)
    assert done.returncode != 0
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr, done.stderr


def test_the_run_timeout_names_the_flag(tmp_path: Path) -> None:
    code = "import time\ntime.sleep(30)"
    done = ci_mcp("run", "--code", code, "--timeout", "1", env=base_env(tmp_path), cwd=tmp_path)
    assert done.returncode == 1
    assert "--timeout" in done.stderr and "timeout_seconds" not in done.stderr, done.stderr


def test_serving_http_on_a_port_in_use_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = ci_mcp("serve", "--transport", "http", "--port", str(port), env=base_env(tmp_path), cwd=tmp_path)
    assert done.returncode != 0
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr, done.stderr
    assert str(port) in done.stderr


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


def test_doctor_without_the_analysis_libraries_still_sees_the_kernel_run_and_the_network_isolated(
    tmp_path: Path,
) -> None:
    python = make_venv(tmp_path / "bare-venv", hide=("numpy", "pandas", "matplotlib", "openpyxl"))
    done = ci_mcp("doctor", env=base_env(tmp_path) | {"CI_MCP_KERNEL_PYTHON": str(python)}, cwd=tmp_path)
    report = done.stdout + done.stderr
    checks = doctor_lines(done.stdout)
    assert checks.get("kernel") == "ok" and "started and ran code" in done.stdout, report
    assert checks.get("analysis libs") == "FAIL", report
    libs_line = next(line for line in done.stdout.splitlines() if "analysis libs" in line)
    assert all(name in libs_line for name in ("numpy", "pandas", "matplotlib", "openpyxl")), report
    if sandbox.bwrap_works()[0]:
        assert checks.get("no network") == "ok", report
    assert done.returncode == 1, report


def test_doctor_measures_that_an_unsandboxed_kernel_reaches_the_network(tmp_path: Path) -> None:
    done = ci_mcp("doctor", env=base_env(tmp_path) | {"CI_MCP_SANDBOX": "none"}, cwd=tmp_path)
    report = done.stdout + done.stderr
    checks = doctor_lines(done.stdout)
    assert checks.get("kernel") == "ok", report
    assert checks.get("no network") == "FAIL" and "NOT isolated: a kernel reached" in done.stdout, report


def test_run_shows_the_output_while_the_code_is_still_running(tmp_path: Path) -> None:
    """The code prints, then waits for a file that the test creates only after it has read that print."""
    go = tmp_path / "go"
    code = (
        "import os, time\nprint('first line', flush=True)\n"
        f"while not os.path.exists({str(go)!r}):\n    time.sleep(0.02)\nprint('second line')"
    )
    env = base_env(tmp_path) | {"CI_MCP_SANDBOX": "none"}  # unconfined, so the kernel can see `go`
    with subprocess.Popen(
        [sys.executable, "-m", "ci_mcp", "run", "--code", code],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    ) as proc:  # closes its stdout pipe
        lines: queue.Queue[str | None] = queue.Queue()

        def read() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.put(line)
            lines.put(None)

        threading.Thread(target=read, daemon=True).start()
        seen: list[str | None] = []
        try:
            while "first line\n" not in seen and None not in seen:
                seen.append(lines.get(timeout=60))  # a bound: without live output the line only comes after `go`
            assert "first line\n" in seen and proc.poll() is None, seen  # shown while the run waits for `go`
        finally:
            go.touch()
        assert proc.wait(timeout=60) == 0
        while seen[-1] is not None:
            seen.append(lines.get(timeout=60))
    out = "".join(line for line in seen if line is not None)
    assert "second line" in out and out.count("first line") == 1, out  # shown once, not again at the end
