"""The macOS sandbox (Seatbelt): the generated profile's rules, and the launch plumbing through a stand-in
sandbox-exec. sandbox-exec exists only on macOS, so nothing here shows the profile is enforced: that is untested."""

from __future__ import annotations

import re
import shlex
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from ci_mcp.backends.local import sandbox, seatbelt
from ci_mcp.backends.local.kernel import CONN_DIR
from ci_mcp.errors import ConfigError
from ci_mcp.settings import Settings
from tests.conftest import all_text, open_client

HOSTILE = 'we") (allow default) (allow network*) ; ("'  # one name: a "/" would only add directories


def _rules(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("(")]


def _paths_of(profile: seatbelt.Profile, rule_pattern: str) -> set[str]:
    """The paths the rules matching `rule_pattern` allow (through their parameters)."""
    params = dict(profile.params)
    names = [re.findall(r'\(param "([A-Z_0-9]+)"\)', r) for r in _rules(profile.text) if re.search(rule_pattern, r)]
    return {params[n] for found in names for n in found}


def _kernel_profile(tmp_path: Path, workspace_name: str = "ws") -> tuple[seatbelt.Profile, Path, Path]:
    workspace = tmp_path / workspace_name
    workspace.mkdir(parents=True)
    runtime = tmp_path / "runtime"
    runtime.mkdir()
    venv = tmp_path / "venv"
    venv.mkdir()
    profile = seatbelt.profile(
        read=[str(venv)], write=[str(workspace)], private=CONN_DIR, private_parent=str(runtime.resolve())
    )
    return profile, workspace, venv


def test_the_profile_denies_everything_by_default_and_allows_no_network(tmp_path: Path) -> None:
    profile, _, _ = _kernel_profile(tmp_path)
    rules = _rules(profile.text)
    assert rules[:2] == ["(version 1)", "(deny default)"]
    assert not any(r.startswith("(allow default") or r.startswith("(allow network*") for r in rules)
    network = [r for r in rules if r.startswith("(allow network")]
    assert network, "the kernel's socket to the server needs rules"
    assert all('unix-socket (subpath (param "WRITE_' in r for r in network), network  # Unix sockets only
    for denied in ("network-outbound (remote ip)", "network-inbound (local ip)", "network-bind (local ip)"):
        assert f"(deny {denied})" in rules


def test_the_profile_allows_writes_only_to_the_working_and_private_directories(tmp_path: Path) -> None:
    profile, workspace, venv = _kernel_profile(tmp_path)
    writes = _paths_of(profile, r"file-write\*")
    assert writes == {str(workspace), str(workspace.resolve()), CONN_DIR}
    fixed = [r for r in _rules(profile.text) if "file-write" in r and "(param" not in r]
    assert fixed == ['(allow file-write-data (literal "/dev/null"))', '(allow file-write-data (literal "/dev/zero"))']
    reads = _paths_of(profile, r"file-read\*")
    assert str(venv) in reads and "/usr" in reads
    home = Path.home()
    assert not any(home.is_relative_to(p) or Path(p) == Path("/") for p in reads), reads  # no listing of the home
    assert str(tmp_path) not in reads  # the parent of the workspace: its metadata only
    assert str(tmp_path) in _paths_of(profile, r"file-read-metadata \(literal")
    assert _paths_of(profile, r"process-exec") == reads  # programs run only from what it may read
    assert not any(r.startswith("(allow process-exec") for r in _rules(profile.text))


def test_a_path_with_quotes_or_parentheses_stays_data(tmp_path: Path) -> None:
    plain, _, _ = _kernel_profile(tmp_path / "a", "ws")
    hostile, workspace, _ = _kernel_profile(tmp_path / "b", HOSTILE)
    assert str(workspace) not in hostile.text and "(allow default" not in hostile.text
    assert hostile.text == plain.text  # the profile text holds no path at all
    argv = hostile.argv()
    assert argv[:3] == [seatbelt.SANDBOX_EXEC, "-p", hostile.text]
    assert [name for name, value in hostile.params if value == str(workspace)] != []
    assert argv.count("-D") == len(hostile.params)
    assert f"WRITE_0={workspace}" in argv


def test_relative_paths_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        seatbelt.profile(read=["venv"], write=[str(tmp_path)], private=CONN_DIR, private_parent=str(tmp_path))


def test_auto_chooses_seatbelt_on_macos_where_sandbox_exec_exists(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    fake = tmp_path / "sandbox-exec"
    monkeypatch.setattr(seatbelt, "SANDBOX_EXEC", str(fake))
    with pytest.raises(ConfigError, match="CI_MCP_SANDBOX=seatbelt"):
        sandbox.plan_sandbox("seatbelt", platform="darwin")  # missing
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    assert sandbox.plan_sandbox("auto", platform="darwin").mode == "seatbelt"
    assert sandbox.plan_sandbox("seatbelt", platform="darwin").mode == "seatbelt"
    assert sandbox.plan_sandbox("none", platform="darwin").mode == "none"
    with pytest.raises(ConfigError, match="only on macOS"):
        sandbox.plan_sandbox("seatbelt", platform="linux")
    windows = sandbox.plan_sandbox("auto", platform="win32")
    assert windows.mode == "none" and "NOT SANDBOXED" in windows.reason


@pytest.mark.anyio
async def test_a_kernel_starts_through_the_seatbelt_launch_with_its_directories_filled_in(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A stand-in sandbox-exec (it enforces nothing) checks that every writable -D path exists, i.e. the kernel's
    private directory was filled in, records its arguments, and runs the kernel."""
    record = tmp_path / "argv.txt"
    fake = tmp_path / "fake-sandbox-exec"
    fake.write_text(
        "#!/bin/sh\n"
        f"printf '%s\\0' \"$@\" > {shlex.quote(str(record))}\n"
        '[ "$1" = -p ] || exit 97\nshift 2\n'
        'while [ "$1" = -D ]; do\n'
        '  case "$2" in WRITE_*) [ -d "${2#*=}" ] || { echo "missing ${2#*=}" >&2; exit 98; } ;; esac; shift 2\n'
        "done\n"
        'exec "$@"\n'
    )
    fake.chmod(0o755)
    monkeypatch.setattr(seatbelt, "SANDBOX_EXEC", str(fake))
    monkeypatch.setattr(sandbox, "PLATFORM", "darwin")
    client, store = await open_client(make_settings(sandbox="seatbelt", kernel_pool_size=0))
    code = "import os, sys, tempfile\nprint('cwd', os.getcwd())\nprint('tmp', tempfile.gettempdir())"
    async with client:
        result = await client.call_tool("run_code_analysis", {"code": code})
    workspaces = store.workspaces_dir
    store.close()
    text = all_text(result)
    assert not result.is_error, text
    args = record.read_text().split("\0")
    assert args[0] == "-p" and args[2] == "-D", args[:3]
    params = dict(a.split("=", 1) for a in args[3 : args.index(sys.executable) : 2])
    writes = {v for k, v in params.items() if k.startswith("WRITE_")}
    cwd = re.search(r"cwd (\S+)", text)
    tmp = re.search(r"tmp (\S+)", text)
    assert cwd and tmp, text
    assert Path(cwd[1]).parent == workspaces.resolve() or Path(cwd[1]).parent == workspaces
    assert cwd[1] in writes and tmp[1] in writes, (writes, text)  # the private dir, filled in, is the TMPDIR
    assert CONN_DIR not in "".join(args)
