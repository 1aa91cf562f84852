"""CI_MCP_KERNEL_PYTHON: kernels on another interpreter, and what the model is told that interpreter has."""

from __future__ import annotations

import importlib.util
import site
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from mcp import Client

from ci_mcp.backends.local import sandbox
from ci_mcp.settings import Settings
from tests.conftest import all_text, open_client
from tests.local.venvs import make_venv

pytestmark = pytest.mark.anyio

SANDBOXES = ["bwrap", "none"] if sandbox.bwrap_works()[0] else ["none"]


@pytest.mark.parametrize("mode", SANDBOXES)
async def test_a_kernel_runs_on_another_virtual_environment_of_the_same_base_python(
    make_settings: Callable[..., Settings], tmp_path: Path, mode: str
) -> None:
    python = make_venv(tmp_path / "other-venv")
    client, store = await open_client(make_settings(kernel_python=str(python), sandbox=mode, kernel_pool_size=0))
    async with client:
        result = await client.call_tool(
            "run_code_analysis", {"code": "import sys, IPython\nprint('prefix', sys.prefix)"}
        )
    store.close()
    assert not result.is_error, all_text(result)
    assert f"prefix {tmp_path / 'other-venv'}" in all_text(result)


@pytest.mark.skipif(not sandbox.bwrap_works()[0], reason="needs bubblewrap")
async def test_import_paths_that_would_expose_the_home_or_the_data_dir_are_not_mounted(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    python = make_venv(tmp_path / "other-venv")
    site_dir = next((tmp_path / "other-venv" / "lib").glob("python*/site-packages"))
    home = Path.home()
    (site_dir / "wide.pth").write_text(f"{tmp_path}\n{home}\n/tmp\n")  # each contains the data dir or the home
    (tmp_path / "host-only.txt").write_text("host")
    settings = make_settings(kernel_python=str(python), sandbox="bwrap", kernel_pool_size=0)
    python_dirs = [Path(p).resolve() for p in (sys.prefix, sys.base_prefix, *site.getsitepackages())]
    needed = {p.relative_to(home).parts[0] for p in python_dirs if p.is_relative_to(home) and p != home}
    hidden = [str(tmp_path / "host-only.txt"), str(settings.data_dir)]
    hidden += [str(e) for e in home.iterdir() if e.name not in needed]
    assert (settings.data_dir.parent / "host-only.txt").exists()
    client, store = await open_client(settings)
    async with client:
        code = f"import os\nprint('visible', [p for p in {hidden!r} if os.path.lexists(p)])"
        result = await client.call_tool("run_code_analysis", {"code": code})
    store.close()
    assert not result.is_error, all_text(result)
    assert "visible []" in all_text(result), all_text(result)


ANALYSIS = ("numpy", "pandas", "matplotlib", "openpyxl")


async def test_a_kernel_python_without_ipython_is_named_with_what_to_install(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    python = make_venv(tmp_path / "no-ipython", hide=("IPython",))
    client, store = await open_client(make_settings(kernel_python=str(python), kernel_pool_size=0))
    async with client:
        ran = await client.call_tool("run_code_analysis", {"code": "print(1)"})
    store.close()
    text = all_text(ran)
    assert ran.is_error and "lacks IPython: install ipython and matplotlib-inline" in text, text


async def _told(client: Client) -> str:
    """What the calling model reads: the server instructions and the run tool's description."""
    tools = {t.name: t for t in (await client.list_tools()).tools}
    return f"{client.instructions}\n{tools['run_code_analysis'].description}"


async def test_the_model_is_told_the_analysis_libraries_are_missing_when_the_kernel_lacks_them(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    python = make_venv(tmp_path / "bare-venv", hide=ANALYSIS)
    client, store = await open_client(make_settings(kernel_python=str(python), kernel_pool_size=0))
    async with client:
        told = await _told(client)
        ran = await client.call_tool("run_code_analysis", {"code": "import numpy"})
    store.close()
    assert "ModuleNotFoundError" in all_text(ran)  # the fixture really lacks them
    assert "NOT installed: numpy, pandas, matplotlib, openpyxl" in told, told
    assert "with numpy" not in told and "Installed: numpy" not in told, told
    assert "Figures still open" not in told, told  # no promise of charts without matplotlib


async def test_the_model_is_told_the_libraries_the_kernel_has(make_settings: Callable[..., Settings]) -> None:
    present = [name for name in ANALYSIS if importlib.util.find_spec(name) is not None]  # kernel = this Python
    client, store = await open_client(make_settings(kernel_pool_size=0))
    async with client:
        told = await _told(client)
    store.close()
    assert f"Python {sys.version.split()[0]} with {', '.join(present)}" in told, told
    assert "NOT installed" not in told if len(present) == len(ANALYSIS) else "NOT installed" in told, told
