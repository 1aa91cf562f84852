"""Adding packages to the kernel: `%pip install` in a sandbox fails at once and says how; the way that works is a
kernel interpreter in another virtual environment (CI_MCP_KERNEL_PYTHON), as the README shows."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from ci_mcp.backends.local import installs, sandbox
from ci_mcp.settings import Settings
from tests.conftest import all_text, open_client, session_of
from tests.local.venvs import make_venv

pytestmark = pytest.mark.anyio

needs_bwrap = pytest.mark.skipif(not sandbox.bwrap_works()[0], reason="needs bubblewrap")


@needs_bwrap
@pytest.mark.parametrize(
    "install",
    ["%pip install tabulate", "!pip install -q tabulate", "  %pip  install tabulate==0.9", "!uv pip install x"],
)
async def test_installing_in_the_sandbox_fails_at_once_and_says_how_to_add_packages(
    make_settings: Callable[..., Settings], install: str
) -> None:
    client, store = await open_client(make_settings(sandbox="bwrap"))
    async with client:
        first = await client.call_tool("run_code_analysis", {"code": "x = 41"})
        session = session_of(first)
        refused = await client.call_tool(
            "run_code_analysis", {"code": f"x += 1\n{install}\nimport tabulate", "session_id": session}
        )
        after = await client.call_tool("run_code_analysis", {"code": "print('x is', x)", "session_id": session})
        tools = {t.name: t for t in (await client.list_tools()).tools}
        told = f"{client.instructions}\n{tools['run_code_analysis'].description}"
    store.close()
    assert "packages cannot be installed (`%pip install` is refused)" in told, told  # so it need not try
    text = all_text(refused)
    assert refused.is_error, text
    assert "cannot be installed" in text and "the kernel's sandbox has none" in text, text
    assert "CI_MCP_KERNEL_PYTHON" in text and "uv tool install ci-mcp --with" in text, text  # how to add them
    assert session in text  # the model can carry on in its session
    assert "x is 41" in all_text(after), all_text(after)  # nothing of the refused call ran; the kernel lives on


async def test_without_a_sandbox_install_lines_are_not_refused(make_settings: Callable[..., Settings]) -> None:
    client, store = await open_client(make_settings(sandbox="none"))
    async with client:
        ran = await client.call_tool("run_code_analysis", {"code": "print('ran')\nif False:\n    %pip install x"})
    store.close()
    assert "ran" in all_text(ran) and "cannot be installed" not in all_text(ran), all_text(ran)


def test_what_counts_as_an_install_line() -> None:
    assert installs.install_line("import os\n!python -m pip install a b\n") == "!python -m pip install a b"
    assert installs.install_line("%conda install -y numpy") == "%conda install -y numpy"
    assert installs.install_line("print('%pip install x')") is None  # inside a string, not a magic
    assert installs.install_line("# %pip install x\n!pip list\n%pip show numpy") is None


SANDBOXES = ["bwrap", "none"] if sandbox.bwrap_works()[0] else ["none"]


@pytest.mark.parametrize("mode", SANDBOXES)
async def test_an_operator_adds_a_package_with_a_kernel_python_in_another_virtual_environment(
    make_settings: Callable[..., Settings], tmp_path: Path, mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As in the README: a venv with ipykernel plus the package, and CI_MCP_KERNEL_PYTHON set to its python in the
    server's environment. (The test venv gets ipykernel through a .pth file and the package written into its
    site-packages, as pip would.)"""
    venv = tmp_path / "kernel-venv"
    python = make_venv(venv)
    site_packages = next((venv / "lib").glob("python*/site-packages"))
    (site_packages / "ci_mcp_extra").mkdir()
    (site_packages / "ci_mcp_extra" / "__init__.py").write_text("ANSWER = 'from the kernel venv'\n")
    code = "import ci_mcp_extra\nprint(ci_mcp_extra.ANSWER)"
    plain, plain_store = await open_client(make_settings(sandbox=mode))
    async with plain:
        without = await plain.call_tool("run_code_analysis", {"code": code})
    plain_store.close()
    environment = {"CI_MCP_KERNEL_PYTHON": str(python), "CI_MCP_SANDBOX": mode}  # as the operator sets them
    from_env = Settings.from_env(environment, data_dir=tmp_path / "data-2", kernel_pool_size=0, kernel_preload=False)
    assert from_env.kernel_python == str(python)
    added, store = await open_client(from_env)
    async with added:
        with_it = await added.call_tool("run_code_analysis", {"code": code})
    store.close()
    assert "ModuleNotFoundError" in all_text(without), all_text(without)  # the server's own Python lacks it
    assert not with_it.is_error and "from the kernel venv" in all_text(with_it), all_text(with_it)
