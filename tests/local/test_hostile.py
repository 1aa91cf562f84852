"""Hostile code against the sandboxed kernel, through the MCP client: each case is contained, the result says what
happened, and the next call works. These need bubblewrap; they are skipped (with the reason) only where it cannot
run, and `.ci/run` installs it."""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from mcp import Client

from ci_mcp.backends.local import cgroups, interpreter, sandbox
from ci_mcp.settings import Settings
from tests.conftest import all_text, assert_kernel_start, open_client, session_of, texts

BWRAP_OK, BWRAP_WHY = sandbox.bwrap_works()
pytestmark = [pytest.mark.anyio, pytest.mark.skipif(not BWRAP_OK, reason=f"bubblewrap unavailable: {BWRAP_WHY}")]


@pytest.fixture(params=["zygote", "cold"])
async def sandboxed(
    make_settings: Callable[..., Settings], request: pytest.FixtureRequest
) -> AsyncIterator[tuple[Client, Settings]]:
    """Each case against a kernel forked by the zygote and against one started cold (its own bwrap)."""
    settings = make_settings(
        sandbox="bwrap",
        memory_limit_mb=512,
        max_file_size_mb=20,
        max_session_dir_mb=60,
        max_processes=64,
        kernel_zygote=request.param == "zygote",
    )
    client, store = await open_client(settings)
    async with client:
        if request.param == "zygote":  # (a fork costs little; without a zygote every kernel starts cold anyway)
            await assert_kernel_start(client, "zygote")
        yield client, settings
    store.close()


async def run(client: Client, code: str, **kw: object):
    return await client.call_tool("run_code_analysis", {"code": code, **kw})


async def still_works(client: Client, sid: str) -> None:
    after = await run(client, "print('still', 6 * 7)", session_id=sid)
    assert not after.is_error and "still 42" in all_text(after), all_text(after)


async def test_allocating_10_gib_raises_memory_error_and_the_session_continues(sandboxed) -> None:
    client, _ = sandboxed
    result = await run(client, "keep = 1\nx = bytearray(10 * 1024 ** 3)")
    assert "MemoryError" in all_text(result)
    await still_works(client, session_of(result))


async def test_memory_eaten_in_small_steps_kills_only_that_kernel(sandboxed) -> None:
    client, _ = sandboxed
    other = await run(client, "survivor = 'here'")
    code = "chunks = []\nwhile True:\n    chunks.append(bytearray(32 * 1024 * 1024))"
    result = await run(client, code)
    text = all_text(result)
    assert "MemoryError" in text or "kernel process died" in text
    await still_works(client, session_of(result))
    untouched = await run(client, "print(survivor)", session_id=session_of(other))
    assert "here" in all_text(untouched)


async def test_a_fork_bomb_is_contained_and_its_processes_are_gone(sandboxed) -> None:
    client, _ = sandboxed
    code = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        break"
    result = await run(client, code, timeout_seconds=20)
    sid = session_of(result)
    after = await run(client, PROCESS_STATES, session_id=sid)
    states = eval(texts(after)[1])  # noqa: S307 - our own printed dict
    # A zombie is a process that is gone, its entry left until its parent (the namespace's init) reaps it, which a
    # loaded machine may not have scheduled yet; every other process counts.
    alive = [pid for pid, state in states.items() if state != "Z"]
    assert len(alive) <= 3, states  # init, the kernel, and the listing itself at most


PROCESS_STATES = """
import os
states = {}
for p in os.listdir('/proc'):
    if p.isdigit():
        try:
            states[int(p)] = open(f'/proc/{p}/stat').read().rsplit(')', 1)[1].split()[0]
        except OSError:
            pass
print(dict(sorted(states.items())))
"""


async def test_os_exit_is_reported_and_the_session_is_reset(sandboxed) -> None:
    client, _ = sandboxed
    result = await run(client, "import os; os._exit(3)")
    assert result.is_error and "exit code 3" in all_text(result)
    await still_works(client, session_of(result))


async def test_a_segfault_is_reported_and_the_session_is_reset(sandboxed) -> None:
    client, _ = sandboxed
    result = await run(client, "import ctypes\nctypes.string_at(0)")
    assert result.is_error and "kernel process died" in all_text(result)
    await still_works(client, session_of(result))


async def test_printing_100_mb_is_capped_and_spilled(sandboxed) -> None:
    client, _ = sandboxed
    result = await run(
        client, "import sys\nfor _ in range(100):\n    sys.stdout.write('x' * (1024 * 1024))", timeout_seconds=120
    )
    text = all_text(result)
    assert len(texts(result)) > 1 and len(texts(result)[1]) == 20_000, text[:3000]
    assert "The full output is file" in text
    await still_works(client, session_of(result))


@pytest.mark.usefixtures("each_walk")
async def test_writing_a_huge_file_stops_at_the_file_size_limit(sandboxed) -> None:
    client, _ = sandboxed
    code = "with open('big.bin', 'wb') as f:\n    for _ in range(10 * 1024):\n        f.write(b'0' * (1024 * 1024))"
    result = await run(client, code)
    assert "File too large" in all_text(result)
    await still_works(client, session_of(result))


@pytest.mark.usefixtures("each_walk")
async def test_many_files_past_the_session_directory_limit_are_deleted(sandboxed) -> None:
    client, _ = sandboxed
    code = "for i in range(4):\n    open(f'part{i}.bin', 'wb').write(b'0' * (19 * 1024 * 1024))"
    result = await run(client, code)
    assert "grew past its limit of 60 MB" in all_text(result)
    listing = await run(
        client, "import os; print(sum(os.path.getsize(f) for f in os.listdir('.')))", session_id=session_of(result)
    )
    assert int(texts(listing)[1]) <= 60 * 1024 * 1024


@pytest.fixture
def fake_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A home the test controls, with real credentials in it, set as the server's HOME."""
    home = tmp_path / "home"
    for rel, secret in ((".ssh/id_ed25519", "ssh-s3cr3t"), (".azure/msal_token_cache.json", "azure-s3cr3t")):
        (home / rel).parent.mkdir(parents=True)
        (home / rel).write_text(secret)
    monkeypatch.setenv("HOME", str(home))
    assert Path.home() == home
    return home


@pytest.mark.parametrize("target", ["/etc/shadow", "HOME_SSH", "HOME_AZURE", "HOME_DIR", "DATA_DIR", "OTHER_SESSION"])
async def test_host_secrets_data_and_other_sessions_are_invisible(fake_home: Path, sandboxed, target: str) -> None:
    client, settings = sandboxed
    await run(client, "open('mine.txt', 'w').write('private')")
    other_dir = next(p for p in (settings.data_dir / "workspaces").iterdir() if (p / "mine.txt").exists())
    path = {
        "HOME_SSH": str(fake_home / ".ssh" / "id_ed25519"),
        "HOME_AZURE": str(fake_home / ".azure" / "msal_token_cache.json"),
        "HOME_DIR": str(fake_home),
        "DATA_DIR": str(settings.data_dir),
        "OTHER_SESSION": str(other_dir / "mine.txt"),
    }.get(target, target)
    assert os.path.lexists(path), f"{path} must exist on the host for this test to mean anything"
    code = f"import os\nprint('exists', os.path.lexists({path!r}))"
    code += f"\ntry:\n    print(open({path!r}).read())\nexcept OSError as exc:\n    print(type(exc).__name__)"
    result = await run(client, code)
    text = all_text(result)
    assert "exists False" in text and "FileNotFoundError" in text, text
    assert "s3cr3t" not in text and "private" not in text, text
    await still_works(client, session_of(result))


async def test_nothing_of_the_users_home_is_mounted_but_the_python_it_runs(sandboxed) -> None:
    client, _ = sandboxed
    home = Path.home()
    mounts = interpreter.probe(sys.executable, sandbox.kernel_env(str(home)), not_containing=(home,)).mounts
    needed = {p.relative_to(home).parts[0] for p in mounts if p.is_relative_to(home)}
    entries = sorted(e.name for e in home.iterdir() if e.name not in needed)
    result = await run(
        client, f"import os\nprint([e for e in {entries!r} if os.path.lexists(os.path.join({str(home)!r}, e))])"
    )
    assert "[]" in all_text(result), all_text(result)


@pytest.mark.parametrize("start", ["zygote", "cold"])
async def test_the_environment_carries_no_secrets_or_settings(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch, start: str
) -> None:
    monkeypatch.setenv("AZURE_CLIENT_SECRET", "s3cr3t-value")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-s3cr3t")
    monkeypatch.setenv("CI_MCP_LLM_API_KEY", "k3y")
    client, store = await open_client(make_settings(sandbox="bwrap", kernel_zygote=start == "zygote"))
    async with client:
        result = await run(client, "import os\nprint(sorted(os.environ))\nprint(open('/proc/self/environ').read())")
    store.close()
    text = all_text(result)
    for leaked in ("AZURE_CLIENT_SECRET", "s3cr3t", "OPENAI_API_KEY", "CI_MCP_LLM_API_KEY", "k3y"):
        assert leaked not in text


async def test_a_socket_to_loopback_fails_and_no_connection_arrives(sandboxed) -> None:
    client, _ = sandboxed
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.5)
    port = listener.getsockname()[1]
    accepted: list[object] = []

    def accept() -> None:
        with contextlib.suppress(OSError):
            accepted.append(listener.accept())

    thread = threading.Thread(target=accept)
    thread.start()
    code = (
        "import socket, os\nprint(sorted(os.listdir('/sys/class/net')) if os.path.exists('/sys/class/net') else [])\n"
        f"try:\n    socket.create_connection(('127.0.0.1', {port}), timeout=2)\n    print('connected')\n"
        "except OSError as e:\n    print('refused', type(e).__name__)"
    )
    result = await run(client, code)
    thread.join()
    listener.close()
    assert "refused" in all_text(result) and not accepted


async def test_a_socket_to_a_public_address_fails_without_a_route(sandboxed) -> None:
    client, _ = sandboxed
    # Only reached after the namespace is shown to have no interface but a down loopback: nothing can leave.
    code = (
        "import socket\n"
        "names = [n for _, n in socket.if_nameindex()]\nassert names == ['lo'], names\n"
        "try:\n    socket.create_connection(('192.0.2.1', 80), timeout=2)\n    print('connected')\n"
        "except OSError as e:\n    print('failed', e.errno)"
    )
    result = await run(client, code)
    assert "failed" in all_text(result), all_text(result)


async def test_a_background_process_does_not_outlive_the_run(sandboxed) -> None:
    client, _ = sandboxed
    code = (
        "import subprocess, os\n"
        "subprocess.Popen(['sleep', '600'])\n"
        "if os.fork() == 0:\n    os.setsid()\n"
        "    if os.fork() == 0:\n        import time; time.sleep(600)\n    os._exit(0)\n"
        "os.wait()"
    )
    result = await run(client, code)
    assert "were stopped" in all_text(result)
    check = await run(
        client,
        "import os\nprint([open(f'/proc/{p}/cmdline').read() for p in os.listdir('/proc') if p.isdigit()])",
        session_id=session_of(result),
    )
    assert "sleep" not in all_text(check)


async def test_cgroup_limits_are_used_where_the_host_allows_them() -> None:
    if not cgroups.layout().limits:
        pytest.skip(f"no cgroup memory/pids limits here: {cgroups.layout().describe()}")
    group = cgroups.create(64 * 1024 * 1024, 10)
    assert group is not None
    try:
        pids = next(g.path for g in group.groups if "pids" in g.controls)
        assert (pids / "pids.max").read_text().strip() == "10"
    finally:
        group.remove()
    assert not any(d.exists() for d in group.dirs)
