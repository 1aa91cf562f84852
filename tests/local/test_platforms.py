"""macOS and Windows without their machines: ci-mcp's own modules import without POSIX-only modules or os
attributes (directory file descriptors included, so the working directory is walked by paths), the server runs code
and returns the files it wrote, and the process helpers give the same answers from psutil as from /proc.

What this cannot show: that kernels run under a real Windows or macOS (their process model, file locking, a real
`sandbox-exec`). The README's platform table says so."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ci_mcp.backends.local import procs, sandbox
from tests.conftest import REPO

POSIX_ONLY_MODULES = ("resource", "fcntl", "pwd", "grp", "termios")
# What Windows lacks, hidden from ci-mcp's modules as they are imported again. Not os.WNOHANG: the standard library's
# own POSIX code (subprocess), which runs underneath here, needs it.
POSIX_ONLY_OS = (
    *("O_NOFOLLOW", "O_DIRECTORY", "O_NOCTTY", "O_NONBLOCK", "O_CLOEXEC"),
    *("geteuid", "getuid", "killpg", "fork", "setsid", "getpgid", "setpgid", "mkfifo"),
)
POSIX_ONLY_SIGNALS = ("SIGKILL", "SIGXCPU", "SIGCHLD", "SIGUSR1")

_AS_WINDOWS = textwrap.dedent(
    """
    import asyncio, json, logging, os, sys
    from pathlib import Path

    # Load every third-party module ci-mcp uses as it is, then forget ci-mcp's own modules and take away what
    # Windows lacks: what is imported again below must do without it.
    import ci_mcp.server, ci_mcp.cli, ci_mcp.doctor, ci_mcp.backends.factory, ci_mcp.backends.local.backend
    import ci_mcp.backends.azure.agents.backend, ci_mcp.backends.local.kernel_launcher
    import mcp
    for name in [m for m in sys.modules if m == "ci_mcp" or m.startswith("ci_mcp.")]:
        del sys.modules[name]
    for name in MODULES:
        sys.modules[name] = None
    for attr in OS_ATTRS:
        if hasattr(os, attr):
            delattr(os, attr)
    os.supports_dir_fd = set()  # Windows: no dir_fd= and no os.scandir(fd)
    os.supports_fd = {os.stat}
    import signal
    for attr in SIGNALS:
        if hasattr(signal, attr):
            delattr(signal, attr)
    sys.platform = "win32"

    import ci_mcp.backends.local.kernel_launcher  # the kernel's entry point imports without resource
    from ci_mcp.backends.local import cgroups, procs, workspace

    cgroups._MOUNTS = Path("/nonexistent/mounts")  # Windows has no /proc: no cgroups, and psutil for processes
    procs.USE_PROC = False
    from ci_mcp.backends.factory import create_backend
    from ci_mcp.server import create_server
    from ci_mcp.settings import Settings
    from ci_mcp.store import FileStore

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    data = Path(sys.argv[1])
    settings = Settings(backend="local", data_dir=data, kernel_pool_size=0, kernel_preload=False)
    store = FileStore(data)

    async def main():
        # Windows' Python has no unix sockets: taken away once the event loop exists (it made its own socket pair
        # already), so the kernel's wire is the loopback fallback, greeted with the token of its address file.
        import socket
        del socket.AF_UNIX
        client = mcp.Client(create_server(create_backend(settings, store), store, settings))
        async with client:
            tools = [t.name for t in (await client.list_tools()).tools]
            code = "import os; os.makedirs('out'); open('out/answer.txt', 'w').write('forty-two'); print(6 * 7)"
            run = await client.call_tool("run_code_analysis", {"code": code})
            texts = [c.text for c in run.content if getattr(c, "text", None)]
            links = {c.name: str(c.uri) for c in run.content if getattr(c, "type", "") == "resource_link"}
            fetched = ""
            if "out/answer.txt" in links:
                read = await client.read_resource(links["out/answer.txt"])
                fetched = read.contents[0].text
        answer = {"tools": tools, "run": texts, "error": run.is_error, "links": sorted(links), "fetched": fetched}
        platform = {"dir_fds": workspace.DIR_FDS, "cgroups": bool(cgroups.layout().hierarchies)}
        print(json.dumps(answer | platform | {"unix sockets": hasattr(socket, "AF_UNIX")}))

    asyncio.run(main())
    store.close()
    """
)


def test_the_server_answers_with_the_local_backend_where_posix_only_modules_are_missing(tmp_path: Path) -> None:
    script = f"MODULES = {POSIX_ONLY_MODULES!r}\nOS_ATTRS = {POSIX_ONLY_OS!r}\nSIGNALS = {POSIX_ONLY_SIGNALS!r}\n"
    script += _AS_WINDOWS
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CI_MCP_", "AZURE_"))}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), str(REPO)])
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "data")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    assert "run_code_analysis" in answer["tools"] and "upload_file" in answer["tools"], answer
    run = "\n".join(answer["run"])
    assert "NOT SANDBOXED: Windows" in run, run  # the loud notice, in the session's first result
    assert "NOT SANDBOXED: Windows" in done.stderr  # and in the log
    assert "42" in run and not answer["error"], run
    assert answer["dir_fds"] is False and answer["cgroups"] is False  # the walk by paths, no cgroups: as on Windows
    assert answer["unix sockets"] is False  # the kernel answered over the loopback fallback
    assert answer["links"] == ["out/answer.txt"] and answer["fetched"] == "forty-two", answer


@pytest.fixture
def tree() -> Iterator[subprocess.Popen[bytes]]:
    """sh -> (subshell -> sleep, sleep, an exited child left a zombie by `exec sleep`): a quiet process tree."""
    script = "(sleep 60 & wait) & sleep 60 & (exit 0) & exec sleep 61"
    proc = subprocess.Popen(["sh", "-c", script])
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # until the tree is complete: the condition, not a fixed time
            every = procs.descendants(proc.pid)
            if (
                len(every) == 4
                and len([p for p in every if procs._zombie(p)]) == 1
                and procs.cmdline(proc.pid) == "sleep 61"
            ):
                break
            time.sleep(0.01)
        yield proc
    finally:
        for pid in procs.descendants(proc.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, procs.KILL)
        proc.kill()
        proc.wait()


def _answers(root: int) -> dict[str, object]:
    every = procs.descendants(root)
    return {
        "children": sorted(procs.children(root)),
        "descendants": sorted(every),
        "cmdlines": {pid: procs.cmdline(pid) for pid in every},
        "zombies": sorted(p for p in every if procs._zombie(p)),
        "parents": {pid: procs._ppid(pid) for pid in every},
        "ancestors": {pid: procs.ancestors(pid)[:2] for pid in every},
        "kernel": procs.find_kernel(root, "sleep 61"),
    }


@pytest.mark.skipif(not procs.USE_PROC, reason="compares psutil with /proc")
def test_the_process_helpers_answer_the_same_from_psutil_as_from_proc(
    tree: subprocess.Popen[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    from_proc = _answers(tree.pid)
    monkeypatch.setattr(procs, "USE_PROC", False)
    from_psutil = _answers(tree.pid)
    assert from_psutil == from_proc
    assert len(from_proc["descendants"]) == 4 and len(from_proc["zombies"]) == 1, from_proc  # type: ignore[arg-type]
    assert from_proc["kernel"] == tree.pid  # `exec sleep 61` made the root the "kernel"
    assert "sleep 60" in from_proc["cmdlines"].values()  # type: ignore[attr-defined]


def test_leftover_processes_are_killed_through_psutil(
    tree: subprocess.Popen[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(procs, "USE_PROC", False)
    assert procs.kill_strays(tree.pid, tree.pid) >= 3  # the two sleeps and the subshell (one may take two signals)
    monkeypatch.setattr(procs, "USE_PROC", True)
    assert [p for p in procs.descendants(tree.pid) if not procs._zombie(p)] == []
    assert tree.poll() is None  # the root ("kernel") lives on


def _proc_count(uid: int) -> int:
    """The /proc reading this replaced: processes whose real uid is `uid`."""
    count = 0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                lines = (entry / "status").read_text().splitlines()
            except OSError:
                continue
            count += any(line.startswith("Uid:") and line.split()[1] == str(uid) for line in lines)
    return count


@pytest.mark.skipif(not procs.USE_PROC or os.geteuid() != 0, reason="starts processes as another user: needs root")
def test_the_users_processes_are_counted_by_psutil_as_by_proc() -> None:
    nobody = 65534  # on the host, processes in other sessions' sandboxes keep the server's uid: this one is quiet
    started = [subprocess.Popen(["sleep", "60"], user=nobody) for _ in range(3)]
    try:
        # Another test run on the machine can start or end processes of that user between the two counts: the counts
        # are compared when a /proc count before and after agree (no change in between), a few times at most.
        for _ in range(20):
            before, counted, after = _proc_count(nobody), sandbox._user_processes(nobody), _proc_count(nobody)
            if before == after:
                break
        assert counted == before >= 3, (before, counted, after)
    finally:
        for proc in started:
            proc.kill()
            proc.wait()


LAUNCHER = REPO / "src" / "ci_mcp" / "backends" / "local" / "kernel_launcher.py"


@pytest.mark.skipif(
    os.geteuid() != 0 or not os.access("/usr/bin/python3", os.X_OK), reason="runs as another user: needs root"
)
def test_a_limit_above_the_hard_limit_in_force_is_held_to_it() -> None:
    """macOS keeps a finite hard limit on processes per user; asking for more must not stop the kernel from
    starting. Here the file-size limit stands in for it, in a process of another user (root may raise limits)."""
    script = (
        "import importlib.util, resource, sys\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (10 << 20, 10 << 20))\n"
        "spec = importlib.util.spec_from_file_location('launcher', sys.argv[1])\n"
        "launcher = importlib.util.module_from_spec(spec); spec.loader.exec_module(launcher)\n"
        "launcher.apply_limits({'file_bytes': 20 << 20})\n"
        "print(resource.getrlimit(resource.RLIMIT_FSIZE))\n"
    )
    done = subprocess.run(
        ["/usr/bin/python3", "-I", "-c", script, str(LAUNCHER)],
        user=65534,
        cwd="/",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == f"({10 << 20}, {10 << 20})"
