"""Per-session cgroups against a real sandboxed kernel, through the MCP client, for each cgroup version this host can
write (v1 and v2 separately, forced): the memory and process limits, freezing between runs (threads the code left
running use no CPU until the next run, and then carry on), killing by membership, and stopping a frozen kernel.
A version is skipped only for the controls it cannot offer here, with the reason."""

from __future__ import annotations

import secrets
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import anyio
import pytest
from mcp import Client

from ci_mcp.backends.local import cgroups, sandbox, workspace
from ci_mcp.settings import Settings
from tests.conftest import all_text, open_client, session_of

BWRAP_OK, BWRAP_WHY = sandbox.bwrap_works()
pytestmark = [pytest.mark.anyio, pytest.mark.skipif(not BWRAP_OK, reason=f"bubblewrap unavailable: {BWRAP_WHY}")]

MAX_PROCESSES = 64


@pytest.fixture(params=[1, 2], ids=["v1", "v2"])
def version(request: pytest.FixtureRequest) -> int:
    return int(request.param)


def forced(monkeypatch: pytest.MonkeyPatch, version: int, *needed: cgroups.Control) -> cgroups.Layout:
    """Make the server use only cgroup `version`; skip when it cannot offer `needed` here."""
    layout = cgroups.probe((version,))
    missing = [c for c in needed if layout.version_of(c) is None]
    if missing or not layout.hierarchies:
        pytest.skip(f"cgroup v{version} cannot give {', '.join(missing)} here ({layout.describe()})")
    monkeypatch.setattr(cgroups, "layout", lambda: layout)
    return layout


@pytest.fixture
def open_sandboxed(make_settings: Callable[..., Settings]) -> Callable[..., AsyncIterator[Client]]:
    import contextlib

    @contextlib.asynccontextmanager
    async def open_(**overrides: object) -> AsyncIterator[Client]:
        settings = make_settings(sandbox="bwrap", max_processes=MAX_PROCESSES, **overrides)
        client, store = await open_client(settings)
        try:
            async with client:
                yield client
        finally:
            store.close()

    return open_  # type: ignore[return-value]


async def run(client: Client, code: str, **kw: object):
    return await client.call_tool("run_code_analysis", {"code": code, **kw})


def name_thread(token: str) -> str:
    """Code that gives the calling thread the OS name `token` (seen on the host in /proc/<tid>/comm)."""
    return f"import ctypes; ctypes.CDLL(None).prctl(15, {token.encode()!r}, 0, 0, 0)\n"


def tasks_named(token: str) -> list[tuple[int, int]]:
    """(pid, tid) of every live host task named `token`."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            for task in (proc / "task").iterdir():
                if (task / "comm").read_text().strip() == token:
                    found.append((int(proc.name), int(task.name)))
        except OSError:
            continue
    return found


def group_of(layout: cgroups.Layout, control: cgroups.Control, token: str) -> Path:
    """The session's group (in the hierarchy serving `control`) that holds the task named `token`."""
    ((pid, _),) = tasks_named(token)
    parent = next(h.parent for h in layout.hierarchies if control in h.controls)
    for group in parent.iterdir():
        if group.is_dir() and str(pid) in (group / "cgroup.procs").read_text().split():
            return group
    raise AssertionError(f"no group under {parent} holds pid {pid}")


def cpu_used(group: Path) -> int:
    """CPU time of the group from the kernel's own accounting (v1 cpuacct.usage in ns, v2 cpu.stat in us)."""
    if (group / "cpuacct.usage").exists():
        return int((group / "cpuacct.usage").read_text())
    stat = dict(line.split() for line in (group / "cpu.stat").read_text().splitlines())
    return int(stat["usage_usec"]) * 1000


def spend_own_cpu(seconds: float) -> None:
    """The window: until this thread itself got `seconds` of CPU, so the scheduler had time to run anything."""
    start = time.thread_time()
    while time.thread_time() - start < seconds:
        pass


BURN = """
import threading
state = {{'n': 0}}
def burn():
    {name}
    while True:
        state['n'] += 1
burner = threading.Thread(target=burn, daemon=True)
burner.start()
while state['n'] == 0:
    pass
print('burning')
"""

CARRY_ON = """
import time
n0, t0 = state['n'], time.monotonic()
while state['n'] == n0 and time.monotonic() - t0 < 30:
    time.sleep(0.001)
print('carried on', state['n'] > n0, burner.is_alive())
"""


async def test_a_busy_thread_uses_no_cpu_between_runs_and_carries_on_in_the_next(
    monkeypatch: pytest.MonkeyPatch, open_sandboxed, version: int
) -> None:
    layout = forced(monkeypatch, version, "freeze", "cpu")
    token = "burn" + secrets.token_hex(4)
    async with open_sandboxed() as client:
        started = await run(client, BURN.format(name=name_thread(token).strip()))
        assert "burning" in all_text(started), all_text(started)
        sid = session_of(started)
        group = group_of(layout, "cpu", token)
        before = cpu_used(group)
        spend_own_cpu(0.3)
        assert cpu_used(group) == before, "the session's tasks ran between runs"
        carried = await run(client, CARRY_ON, session_id=sid)
        assert "carried on True True" in all_text(carried), all_text(carried)
        assert cpu_used(group) > before  # the accounting does see the thread when it may run
        stuck = await run(client, "while True:\n    pass", session_id=sid, timeout_seconds=2)
        assert "time limit" in all_text(stuck), all_text(stuck)
        after = await run(client, "print('still', 6 * 7)", session_id=sid)
        assert "still 42" in all_text(after), all_text(after)


CHURN = """
import subprocess, threading
def churn():
    while True:
        go = threading.Event()
        batch = [threading.Thread(target=go.wait) for _ in range(20)]
        for t in batch:
            t.start()
        go.set()
        for t in batch:
            t.join()
if 'churner' not in globals():
    churner = threading.Thread(target=churn, daemon=True)
    churner.start()
stray = subprocess.Popen(['sleep', '{seconds}'])
print('started', stray.pid)
"""


def live_sleepers(seconds: int) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if (proc / "cmdline").read_bytes().split(b"\0")[:2] == [b"sleep", str(seconds).encode()]:
                found.append(int(proc.name))
        except OSError:
            continue
    return found


async def test_a_process_does_not_outlive_the_run_while_threads_churn(
    monkeypatch: pytest.MonkeyPatch, open_sandboxed, version: int
) -> None:
    forced(monkeypatch, version)
    async with open_sandboxed() as client:
        sid = None
        for _ in range(8):
            seconds = 600_000 + secrets.randbelow(100_000)
            kw: dict[str, object] = {"session_id": sid} if sid else {}
            result = await run(client, CHURN.format(seconds=seconds), **kw)
            sid = session_of(result)
            assert "started" in all_text(result), all_text(result)
            assert live_sleepers(seconds) == [], "a process the run started is still alive"
            assert "were stopped" in all_text(result), all_text(result)


async def test_memory_is_limited_per_session(monkeypatch: pytest.MonkeyPatch, open_sandboxed, version: int) -> None:
    forced(monkeypatch, version, "memory")
    async with open_sandboxed(memory_limit_mb=256) as client:
        code = "chunks = []\nwhile True:\n    chunks.append(bytearray(32 * 1024 * 1024))"
        result = await run(client, code)
        assert "ran out of memory (the limit is 256 MB)" in all_text(result), all_text(result)
        after = await run(client, "print('still', 6 * 7)", session_id=session_of(result))
        assert "still 42" in all_text(after), all_text(after)


FORK_MANY = """
import subprocess
children = []
try:
    for _ in range(500):
        children.append(subprocess.Popen(['sleep', '600']))
except OSError as exc:
    print('stopped by', type(exc).__name__)
print('children', len(children))
"""


async def test_processes_are_limited_per_session(monkeypatch: pytest.MonkeyPatch, open_sandboxed, version: int) -> None:
    layout = forced(monkeypatch, version, "pids")
    token = "pids" + secrets.token_hex(4)
    async with open_sandboxed() as client:
        named = await run(client, name_thread(token))
        sid = session_of(named)
        assert (group_of(layout, "pids", token) / "pids.max").read_text().strip() == str(MAX_PROCESSES)
        result = await run(client, FORK_MANY, session_id=sid)
        text = all_text(result)
        assert "stopped by" in text, text
        assert int(text.split("children ")[1].split()[0]) < MAX_PROCESSES, text
        after = await run(client, "print('still', 6 * 7)", session_id=sid)
        assert "still 42" in all_text(after), all_text(after)


async def test_a_frozen_idle_session_is_stopped_by_the_idle_reaper(
    monkeypatch: pytest.MonkeyPatch, open_sandboxed, version: int
) -> None:
    layout = forced(monkeypatch, version, "freeze")
    token = "idle" + secrets.token_hex(4)
    async with open_sandboxed(idle_session_seconds=1.0) as client:
        result = await run(client, BURN.format(name=name_thread(token).strip()))
        assert "burning" in all_text(result), all_text(result)
        group = group_of(layout, "freeze", token)
        with anyio.fail_after(30):
            while group.exists() or tasks_named(token):
                await anyio.sleep(0.05)
        again = await run(client, "print('back')", session_id=session_of(result))
        assert "was not running" in all_text(again) and "back" in all_text(again), all_text(again)


async def test_the_host_walks_the_session_directory_while_the_kernel_is_frozen(
    monkeypatch: pytest.MonkeyPatch, open_sandboxed, version: int
) -> None:
    layout = forced(monkeypatch, version, "freeze")
    token = "walk" + secrets.token_hex(4)
    states: list[bool] = []

    def look(stage: str, rel: str) -> None:
        if rel == "sub" and tasks_named(token):
            group = group_of(layout, "freeze", token)
            events = group / "cgroup.events"
            if events.exists():
                states.append("frozen 1" in events.read_text().splitlines())
            else:
                states.append((group / "freezer.state").read_text().strip() == "FROZEN")

    monkeypatch.setattr(workspace, "pause_point", look)
    async with open_sandboxed() as client:
        result = await run(client, name_thread(token) + "import os\nos.makedirs('sub')")
        assert not result.is_error, all_text(result)
    assert states == [True]  # the walk after the run, the only one that saw sub/ with the kernel named


def _session_groups(layout: cgroups.Layout, name: str) -> cgroups.KernelCgroups:
    return cgroups.KernelCgroups(
        tuple(cgroups.Group(h.version, h.parent / name, h.controls) for h in layout.hierarchies)
    )


def _group_with_sleeper(layout: cgroups.Layout, name: str) -> tuple[cgroups.KernelCgroups, subprocess.Popen[bytes]]:
    """A session group called `name` in every hierarchy of `layout`, holding a `sleep`, frozen where it can be."""
    groups = _session_groups(layout, name)
    sleeper = subprocess.Popen(["sleep", "600"])
    for group in groups.dirs:
        group.mkdir()
        (group / "cgroup.procs").write_text(str(sleeper.pid))
    groups.freeze()
    return groups, sleeper


def test_groups_left_by_a_killed_server_are_removed_at_start(version: int) -> None:
    layout = cgroups.probe((version,))
    if not layout.hierarchies:
        pytest.skip(f"cgroup v{version} cannot be written here")
    mine = cgroups._owner_tag()
    pid, started = mine[1:].split("-")
    dead_server = f"s{pid}-{int(started) + 1}-{secrets.token_hex(4)}"  # this pid, another start: a reused pid
    dead, orphan = _group_with_sleeper(layout, dead_server)
    live, kept = _group_with_sleeper(layout, f"{mine}-{secrets.token_hex(4)}")
    try:
        orphan.kill()  # what a dead server's kernel gets (PDEATHSIG); frozen by the v1 freezer, it is not acted on
        reaped: list[int] = []
        reaper = threading.Thread(target=lambda: reaped.append(orphan.wait()))  # as init reaps an orphan
        reaper.start()
        cgroups.probe((version,))
        reaper.join(timeout=10)
        assert reaped == [-9]
        assert not any(g.exists() for g in dead.dirs)
        assert all(g.exists() for g in live.dirs) and kept.poll() is None  # a live server's session is left alone
    finally:
        for groups, proc in ((dead, orphan), (live, kept)):
            groups.remove()
            proc.wait(timeout=10)
