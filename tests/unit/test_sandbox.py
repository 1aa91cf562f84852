"""src/ci_mcp/backends/local/sandbox.py: the kernel's launch line, read as bwrap would read it.

What the confinement does at run time is measured in tests/local/test_privileges.py and test_hostile.py (slow); this
checks the argv itself, so a dropped flag fails here in milliseconds."""

from __future__ import annotations

from pathlib import Path

import pytest

from ci_mcp.backends.local import sandbox
from ci_mcp.backends.local.kernel import CONN_DIR, KernelLaunch

BWRAP = sandbox.SandboxPlan("bwrap", "test")


def launch(tmp_path: Path, plan: sandbox.SandboxPlan = BWRAP, py_roots: list[Path] | None = None) -> KernelLaunch:
    return sandbox.build_launch(
        plan,
        python="/usr/bin/python3",
        workspace=tmp_path / "ws",
        runtime_dir=tmp_path / "run",
        mpl_cache=tmp_path / "mpl",
        py_roots=py_roots if py_roots is not None else [Path("/opt/venv")],
        kernel_limits={"memory_bytes": 1},
        cgroup_limits=(2, 3),
    )


def options(argv: tuple[str, ...]) -> dict[str, list[tuple[str, ...]]]:
    """bwrap's options with their arguments, by option name."""
    arity = {"--ro-bind": 2, "--bind": 2, "--symlink": 2, "--uid": 1, "--gid": 1, "--cap-drop": 1, "--proc": 1}
    arity |= {"--dev": 1, "--tmpfs": 1, "--dir": 1, "--remount-ro": 1, "--chdir": 1}
    found: dict[str, list[tuple[str, ...]]] = {}
    i = 1
    while argv[i] != "--":
        n = arity.get(argv[i], 0)
        found.setdefault(argv[i], []).append(argv[i + 1 : i + 1 + n])
        i += 1 + n
    assert i == len(argv) - 1, "the command follows the last --"
    return found


@pytest.fixture(autouse=True)
def bwrap_can_disable_userns(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sandbox, "_bwrap_supports", lambda flag: flag == "--disable-userns")


def test_the_kernel_gets_no_network_and_new_namespaces(tmp_path: Path) -> None:
    opts = options(launch(tmp_path).wrapper)
    assert "--unshare-all" in opts and "--unshare-user" in opts
    assert "--share-net" not in opts  # --unshare-all includes the network namespace: no network, loopback included
    assert "--die-with-parent" in opts and "--new-session" in opts


def test_the_kernel_runs_as_nobody_without_capabilities_or_nested_namespaces(tmp_path: Path) -> None:
    opts = options(launch(tmp_path).wrapper)
    assert opts["--uid"] == [(str(sandbox.KERNEL_UID),)] and opts["--gid"] == [(str(sandbox.KERNEL_UID),)]
    assert sandbox.KERNEL_UID == 65534
    assert opts["--cap-drop"] == [("ALL",)]
    assert "--disable-userns" in opts


def test_without_disable_userns_support_the_rest_still_holds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sandbox, "_bwrap_supports", lambda flag: False)
    opts = options(launch(tmp_path).wrapper)
    assert "--disable-userns" not in opts and opts["--cap-drop"] == [("ALL",)]


def test_only_the_session_directory_and_the_socket_directory_are_writable(tmp_path: Path) -> None:
    opts = options(launch(tmp_path).wrapper)
    assert opts["--bind"] == [(str(tmp_path / "ws"), sandbox.DATA_MOUNT), (CONN_DIR, CONN_DIR)]
    assert opts["--remount-ro"] == [("/",)]
    assert opts["--chdir"] == [(sandbox.DATA_MOUNT,)]
    assert opts["--tmpfs"] == [("/tmp",)] and opts["--dev"] == [("/dev",)] and opts["--proc"] == [("/proc",)]


def test_the_system_and_python_are_bound_read_only_and_nothing_else_of_the_host(tmp_path: Path) -> None:
    opts = options(launch(tmp_path, py_roots=[Path("/opt/venv"), Path("/srv/site")]).wrapper)
    ro = opts["--ro-bind"]
    assert all(src == dst for src, dst in ro if src != str(Path(sandbox.__file__).parent / "kernel_launcher.py"))
    sources = {src for src, _ in ro}
    assert {"/usr", "/opt/venv", "/srv/site"} <= sources
    assert all(
        src in ("/usr", "/opt/venv", "/srv/site", "/proc/sys")
        or src.startswith("/etc/")
        or src.endswith("kernel_launcher.py")
        for src in sources
    ), sources
    etc = {src.removeprefix("/etc/") for src in sources if src.startswith("/etc/")}
    assert etc <= set(sandbox._ETC_ALLOWED) and "shadow" not in etc
    assert str(Path.home()) not in sources and str(tmp_path) not in sources


def test_the_hosts_sysctls_are_read_only_in_the_kernel(tmp_path: Path) -> None:
    argv = launch(tmp_path).wrapper
    at = argv.index("/proc/sys")
    assert argv[at - 1 : at + 2] == ("--ro-bind", "/proc/sys", "/proc/sys") and argv.index("--proc") < at


def zygote_launch(tmp_path: Path) -> tuple[str, ...]:
    """The zygote's bwrap options, up to the "--" before its command (as a kernel's wrapper ends)."""
    argv = sandbox.zygote_launch(
        python="/usr/bin/python3",
        workspaces_dir=tmp_path / "workspaces",
        runtime_dir=Path("/tmp/ci-mcp-test"),
        mpl_cache=tmp_path / "mpl",
        py_roots=[Path("/opt/venv")],
    ).argv
    return argv[: argv.index("--") + 1]


def test_the_zygote_is_sandboxed_like_a_kernel_but_may_make_user_namespaces_for_its_children(tmp_path: Path) -> None:
    opts = options(zygote_launch(tmp_path))
    assert "--unshare-all" in opts and "--unshare-user" in opts and "--share-net" not in opts
    assert opts["--uid"] == [(str(sandbox.KERNEL_UID),)] and opts["--cap-drop"] == [("ALL",)]
    assert "--disable-userns" not in opts  # each child makes its own, then disables them (zygote_process.py)
    assert "--die-with-parent" in opts and opts["--remount-ro"] == [("/",), ("/dev",)]


def test_the_zygote_sees_sessions_only_under_its_private_root(tmp_path: Path) -> None:
    opts = options(zygote_launch(tmp_path))
    root = sandbox.ZYGOTE_ROOT
    assert opts["--bind"] == [
        (str(tmp_path / "workspaces"), f"{root}/workspaces"),
        ("/tmp/ci-mcp-test", f"{root}/runtime"),
    ]
    assert ("/proc", f"{root}/proc") in opts["--ro-bind"]
    assert all(dst.startswith(("/usr", "/opt/", "/etc/", root)) for _, dst in opts["--ro-bind"]), opts["--ro-bind"]
    assert (sandbox.DATA_MOUNT,) in opts["--dir"]


def test_the_environment_is_scrubbed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AZURE_CLIENT_SECRET", "s3cret")
    monkeypatch.setenv("CI_MCP_HTTP_TOKENS", "alice:s3cret")
    monkeypatch.setenv("OPENAI_API_KEY", "s3cret")
    monkeypatch.setenv("TZ", "Europe/Berlin")
    env = launch(tmp_path).env
    assert "s3cret" not in " ".join(env.values())
    assert env["HOME"] == "/tmp" and env["TZ"] == "Europe/Berlin"
    assert env["PATH"].split(":")[0] == "/usr/bin"


def test_without_a_sandbox_the_kernel_runs_in_the_session_directory_with_limits_only(tmp_path: Path) -> None:
    plain = launch(tmp_path, sandbox.SandboxPlan("none", "test"))
    assert plain.wrapper == ()
    assert plain.cwd == tmp_path / "ws" and plain.env["HOME"] == str(tmp_path / "ws")
    assert plain.limits == {"memory_bytes": 1} and plain.cgroup_limits == (2, 3)
    assert Path(plain.script).name == "kernel_launcher.py" and Path(plain.script).is_file()


def test_the_launcher_is_bound_where_the_sandboxed_command_runs_it(tmp_path: Path) -> None:
    boxed = launch(tmp_path)
    ro = options(boxed.wrapper)["--ro-bind"]
    (launcher,) = [(src, dst) for src, dst in ro if src.endswith("kernel_launcher.py")]
    assert Path(launcher[0]).is_file() and launcher[1] == boxed.script
    assert boxed.cgroup_limits == (2, 3) and boxed.limits == {"memory_bytes": 1}
