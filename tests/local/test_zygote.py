"""Kernels forked by the zygote are isolated from each other and from the host as a bwrap-started kernel is, and
kernels still start (cold, each its own bwrap) where the zygote cannot work. Through the MCP client, with real
kernels; the shared hostile cases (test_hostile.py, test_privileges.py) run against both kinds of start too."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import anyio
import pytest
from mcp import Client

from ci_mcp.backends.factory import create_backend
from ci_mcp.backends.local import sandbox, zygote
from ci_mcp.server import create_server
from ci_mcp.settings import Settings
from ci_mcp.store import FileStore
from tests.conftest import all_text, assert_kernel_start, kernel_start, open_client, session_of, texts

BWRAP_OK, BWRAP_WHY = sandbox.bwrap_works()
pytestmark = [pytest.mark.anyio, pytest.mark.skipif(not BWRAP_OK, reason=f"bubblewrap unavailable: {BWRAP_WHY}")]


@pytest.fixture
async def forked(make_settings: Callable[..., Settings]) -> AsyncIterator[tuple[Client, Settings]]:
    settings = make_settings(sandbox="bwrap")  # the zygote is on by default
    client, store = await open_client(settings)
    async with client:
        await assert_kernel_start(client, "zygote")
        yield client, settings
    store.close()


async def run(client: Client, code: str, **kw: object):
    result = await client.call_tool("run_code_analysis", {"code": code, **kw})
    assert not result.is_error, all_text(result)
    return result


def printed(result) -> str:
    return texts(result)[1].strip()


async def test_a_forked_kernel_cannot_see_another_sessions_files(forked) -> None:
    client, settings = forked
    mine = await run(client, "open('mine.txt', 'w').write('private')\nimport os\nprint(os.getcwd())")
    other_dir = next(p for p in (settings.data_dir / "workspaces").iterdir() if (p / "mine.txt").exists())
    candidates = [
        str(other_dir / "mine.txt"),
        f"{sandbox.ZYGOTE_ROOT}/workspaces/{other_dir.name}/mine.txt",
        f"/mnt/data/../data/{other_dir.name}/mine.txt",
    ]
    code = f"import os\nprint(sorted(os.listdir('.')), [os.path.lexists(p) for p in {candidates!r}])"
    result = await run(client, code)
    assert printed(result) == f"[] {[False] * len(candidates)}", all_text(result)
    again = await run(client, "print(open('mine.txt').read())", session_id=session_of(mine))
    assert printed(again) == "private"  # the first session still has its own


async def test_the_sessions_parent_and_the_hosts_proc_are_hidden_under_an_empty_read_only_tmpfs(forked) -> None:
    client, settings = forked
    code = (
        "import os\n"
        f"root = {sandbox.ZYGOTE_ROOT!r}\n"
        "found = {'listing': os.listdir(root), 'data_dir': os.path.lexists(" + repr(str(settings.data_dir)) + ")}\n"
        "for name in ('workspaces', 'runtime', 'proc'):\n"
        "    found[name] = os.path.lexists(os.path.join(root, name))\n"
        "try:\n    open(os.path.join(root, 'x'), 'w')\n    found['create'] = 'ALLOWED'\n"
        "except OSError as exc:\n    found['create'] = type(exc).__name__\n"
        "print(json.dumps(found))"
    )
    found = json.loads(printed(await run(client, "import json\n" + code)))
    assert found == {
        "listing": [],
        "data_dir": False,
        "workspaces": False,
        "runtime": False,
        "proc": False,
        "create": "OSError",
    }, found


async def test_a_forked_kernel_sees_only_its_own_processes(forked) -> None:
    client, _ = forked
    first = await run(client, "import os\nprint(os.getpid())")
    assert printed(first) == "2"  # pid 1 is its namespace's init, as in a bwrap sandbox
    code = (
        "import os, signal\n"
        "alive, mine = [], {1} | {int(t) for t in os.listdir('/proc/self/task')}\n"
        "for pid in sorted(set(range(1, 4096)) - mine):  # the kernel's threads answer kill() too\n"
        "    try:\n        os.kill(pid, 0)\n        alive.append(pid)\n"
        "    except ProcessLookupError:\n        pass\n"
        "print(os.getpid(), alive, sorted(int(p) for p in os.listdir('/proc') if p.isdigit()))"
    )
    result = await run(client, code)
    pid, rest = printed(result).split(" ", 1)
    assert pid == "2" and rest == "[] [1, 2]", all_text(result)  # no zygote, no other kernel, no host process


async def test_a_forked_kernel_that_kills_itself_is_reported_and_replaced(forked) -> None:
    client, _ = forked
    result = await client.call_tool("run_code_analysis", {"code": "import os, signal\nos.kill(os.getpid(), 9)"})
    assert result.is_error and "kernel process died" in all_text(result), all_text(result)
    after = await run(client, "print(6 * 7)", session_id=session_of(result))
    assert printed(after) == "42"


async def test_forked_kernels_share_no_network_ipc_or_shared_memory(forked) -> None:
    client, _ = forked
    first = await run(
        client,
        "import socket, ctypes, os\n"
        "listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)\n"
        "listener.bind('\\0ci-mcp-zygote-test')\nlistener.listen()\n"
        "open('/dev/shm/ci-mcp-zygote-test', 'w').write('x')\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "print(libc.shmget(0x5A5A, 4096, 0o1000 | 0o666) >= 0)",  # IPC_CREAT
    )
    assert printed(first) == "True"
    code = (
        "import socket, ctypes, os\n"
        "s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)\n"
        "try:\n    s.connect('\\0ci-mcp-zygote-test')\n    net = 'CONNECTED'\n"
        "except OSError as exc:\n    net = type(exc).__name__\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "print(net, os.path.exists('/dev/shm/ci-mcp-zygote-test'), libc.shmget(0x5A5A, 0, 0))"
    )
    result = await run(client, code)
    assert printed(result) == "ConnectionRefusedError False -1", all_text(result)
    await run(client, "print(listener.fileno() > 0)", session_id=session_of(first))  # still listening there


async def test_a_forked_kernel_holds_no_descriptor_of_the_zygote_and_cannot_regain_privileges(forked) -> None:
    client, _ = forked
    code = r"""
import json, os, socket
found = {"seqpacket": [], "status": {}}
for fd in map(int, os.listdir("/proc/self/fd")):
    try:
        s = socket.socket(fileno=os.dup(fd))
    except OSError:
        continue
    if s.type == socket.SOCK_SEQPACKET:
        found["seqpacket"].append(fd)
    s.close()
status = dict(l.split(":\t", 1) for l in open("/proc/self/status").read().splitlines() if ":\t" in l)
for key in ("CapEff", "CapPrm", "CapInh", "CapBnd", "CapAmb", "NoNewPrivs", "Seccomp"):
    found["status"][key] = status.get(key, "").strip()
try:
    open("/proc/sys/user/max_user_namespaces", "w").write("100")
    found["raise userns limit"] = "ALLOWED"
except OSError as exc:
    found["raise userns limit"] = type(exc).__name__
import subprocess, sys
# From a new single-threaded process (the kernel has threads, and unshare refuses a multithreaded caller)
probe = "import ctypes, os; libc = ctypes.CDLL(None, use_errno=True); "
probe += "print('ALLOWED' if libc.unshare(0x10000000) == 0 else os.strerror(ctypes.get_errno()))"
found["new user namespace"] = subprocess.run(
    [sys.executable, "-c", probe], capture_output=True, text=True
).stdout.strip()
print(json.dumps(found))
"""
    found = json.loads(printed(await run(client, code)))
    assert found["seqpacket"] == [], found  # neither the zygote's control socket nor a status socket
    zero = "0000000000000000"
    assert found["status"] == {
        "CapEff": zero,
        "CapPrm": zero,
        "CapInh": zero,
        "CapBnd": zero,
        "CapAmb": zero,
        "NoNewPrivs": "1",
        "Seccomp": "0",
    }, found
    assert found["raise userns limit"] != "ALLOWED" and found["new user namespace"] != "ALLOWED", found


async def test_numpy_random_differs_between_forked_kernels(forked) -> None:
    client, _ = forked
    code = "import numpy as np, random\nprint(np.random.randint(0, 2**62), random.getrandbits(62))"
    first, second = [printed(await run(client, code)) for _ in range(2)]
    assert first.split()[0] != second.split()[0] and first.split()[1] != second.split()[1]


SESSION_VIEW = """
import json, os, re, matplotlib, matplotlib.units, matplotlib.pyplot as plt
print(json.dumps({
    "figures": plt.get_fignums(),
    "rcParams": {k: repr(v) for k, v in matplotlib.rcParams.items() if k != "backend"},
    "backend chosen": plt._backend_mod is not None,
    "unit converters": sorted(repr(t) for t in matplotlib.units.registry),
    "workspace": sorted(os.listdir(".")),
    "tmp": sorted(re.sub(r"^ci-mcp-.*", "ci-mcp-*", name) for name in os.listdir("/tmp")),
}))
"""


LIBRARIES_LOADED = "import sys\nprint(sorted(m for m in ('numpy', 'pandas', 'matplotlib') if m in sys.modules))"


async def test_a_forked_kernel_sees_what_a_cold_one_sees_of_the_zygotes_chart_warm_up(
    make_settings: Callable[..., Settings],
) -> None:
    """With kernel_preload (the default), the zygote imports the libraries and draws and encodes a chart before it
    forks (issue 12): a session must not see any of it (no open figure, rcParams, matplotlib's backend and unit
    converters as a cold kernel with the same preload has them, nothing in its workspace or /tmp), and its first
    chart still comes back as a picture."""
    client, store = await open_client(make_settings(sandbox="bwrap", kernel_preload=True))
    async with client:
        await assert_kernel_start(client, "zygote")
        assert printed(await run(client, LIBRARIES_LOADED)) == "['matplotlib', 'numpy', 'pandas']"
        seen = json.loads(printed(await run(client, SESSION_VIEW)))
        cold = make_settings(sandbox="bwrap", kernel_zygote=False, kernel_preload=True)
        cold_client, cold_store = await open_client(cold)
        async with cold_client:
            await assert_kernel_start(cold_client, "cold")
            expected = json.loads(printed(await run(cold_client, SESSION_VIEW)))
        cold_store.close()
        assert seen["figures"] == [] and seen["workspace"] == []
        assert seen == expected
        chart = await run(client, "import pandas as pd\npd.Series([3, 1, 2], index=list('abc')).plot.bar(title='t')")
        assert any(b.type == "image" for b in chart.content), all_text(chart)
    store.close()


async def test_without_kernel_preload_the_zygote_imports_no_analysis_library(forked) -> None:
    """kernel_preload off (as in these tests): forked kernels start without numpy, pandas or matplotlib imported,
    and import them when the code does."""
    client, _ = forked
    assert printed(await run(client, LIBRARIES_LOADED)) == "[]"
    chart = await run(client, "import pandas as pd\npd.Series([3, 1, 2], index=list('abc')).plot.bar(title='t')")
    assert any(b.type == "image" for b in chart.content), all_text(chart)


async def test_kernels_start_cold_when_the_zygote_is_off(make_settings: Callable[..., Settings]) -> None:
    client, store = await open_client(make_settings(sandbox="bwrap", kernel_zygote=False))
    async with client:
        assert await kernel_start(client) == "cold"
    store.close()


def _launch_zygotes_with(
    monkeypatch: pytest.MonkeyPatch, argv: Callable[[zygote.ZygoteLaunch], tuple[str, ...]]
) -> None:
    """Zygotes launched as usual but with the command line `argv` makes from the usual launch."""
    usual = sandbox.zygote_launch

    def launch(**kw: object) -> zygote.ZygoteLaunch:
        made = usual(**kw)  # type: ignore[arg-type]
        return zygote.ZygoteLaunch(argv(made), made.env, made.runtime_dir, made.workspaces_dir)

    monkeypatch.setattr(sandbox, "zygote_launch", launch)


async def test_kernels_start_cold_with_one_log_line_when_a_fork_cannot_isolate_itself(
    make_settings: Callable[..., Settings],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A zygote whose children cannot make their mounts (here: it sees an empty directory as the sessions' parent,
    as a machine without some namespace feature fails its children): kernels start cold and still work."""
    empty = tmp_path / "not-the-workspaces"
    empty.mkdir()
    _launch_zygotes_with(
        monkeypatch, lambda launch: tuple(str(empty) if a == str(launch.workspaces_dir) else a for a in launch.argv)
    )
    caplog.set_level(logging.WARNING, logger="ci_mcp.backends.local.zygote")
    client, store = await open_client(make_settings(sandbox="bwrap"))
    async with client:
        assert await kernel_start(client) == "cold"
        assert await kernel_start(client) == "cold"
    store.close()
    lines = [r.getMessage() for r in caplog.records if "kernels start cold" in r.getMessage()]
    assert len(lines) == 1 and "could not isolate itself" in lines[0], lines


async def test_kernels_start_cold_when_the_zygote_cannot_start(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:

    def missing_python(launch: zygote.ZygoteLaunch) -> tuple[str, ...]:
        at = launch.argv.index("--") + 1
        return (*launch.argv[:at], "/nonexistent/python", *launch.argv[at + 1 :])

    _launch_zygotes_with(monkeypatch, missing_python)
    caplog.set_level(logging.WARNING, logger="ci_mcp.backends.local.zygote")
    client, store = await open_client(make_settings(sandbox="bwrap"))
    async with client:
        assert await kernel_start(client) == "cold"
    store.close()
    assert any("the zygote did not start" in r.getMessage() for r in caplog.records)


async def test_when_the_zygote_dies_sessions_go_on_with_cold_kernels(
    make_settings: Callable[..., Settings], caplog: pytest.LogCaptureFixture
) -> None:
    """The zygote is one process for all sessions: when it dies, the kernels forked from it die with its sandbox.
    A session then gets a new kernel (its files kept), new sessions start cold, and a dead spare is never handed out."""
    import os
    import signal

    import psutil

    caplog.set_level(logging.WARNING, logger="ci_mcp.backends.local.zygote")
    settings = make_settings(sandbox="bwrap", kernel_pool_size=1)
    store = FileStore(settings.data_dir, max_bytes=settings.max_store_mb * 1024 * 1024)
    backend = create_backend(settings, store)
    client = Client(create_server(backend, store, settings))
    async with client:
        first = await run(client, "open('kept.txt', 'w').write('yes')\nx = 1")
        pool = backend.pool  # type: ignore[attr-defined]
        with anyio.fail_after(60):
            while not pool._ready:  # a spare forked from the zygote, which dies with it
                await anyio.sleep(0.05)
        zygotes = [p for p in psutil.Process().children() if "zygote_process.py" in " ".join(p.cmdline())]
        assert len(zygotes) == 1, zygotes
        os.killpg(zygotes[0].pid, signal.SIGKILL)
        zygotes[0].wait(timeout=30)
        again = await client.call_tool(
            "run_code_analysis", {"code": "print(open('kept.txt').read())", "session_id": session_of(first)}
        )
        if again.is_error:  # the run met the kernel's death: the next one has a new kernel
            assert "kernel process died" in all_text(again), all_text(again)
            again = await client.call_tool(
                "run_code_analysis", {"code": "print(open('kept.txt').read())", "session_id": session_of(first)}
            )
        assert not again.is_error and "yes" in all_text(again), all_text(again)
        assert await kernel_start(client) == "cold"
    store.close()
    assert any("kernels start cold" in r.getMessage() for r in caplog.records)
