"""The server's side of the kernel's socket (issue 12): a private socket that takes one connection, frames the
server reads as untrusted (only JSON decoded, lines that do not parse or name another execution skipped, lines over
the size limit dropped unread), every output of a run before its result, and output that streams while code runs.

The hostile cases are the session's own code writing to the socket the worker talks to the server on: whatever it
writes, the server goes on, and the session either goes on or is restarted with a notice that says so."""

from __future__ import annotations

import stat
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import anyio
import pytest
from mcp import Client

from ci_mcp.backends.local import kernel as kernel_module
from ci_mcp.backends.local import sandbox
from ci_mcp.backends.local.backend import LocalBackend
from ci_mcp.backends.local.kernel import KernelEvent, StreamEvent
from ci_mcp.models import ErrorOutput, RunRequest, TextOutput, no_progress
from ci_mcp.settings import Settings
from ci_mcp.store import FileStore
from tests.conftest import all_text, open_client, session_of

BWRAP_OK, BWRAP_WHY = sandbox.bwrap_works()
pytestmark = [pytest.mark.anyio, pytest.mark.skipif(not BWRAP_OK, reason=f"bubblewrap unavailable: {BWRAP_WHY}")]

MANY_LINES = "import sys\nfor i in range(300):\n    print('line', i)\nsys.stderr.write('last\\n')\n1/0"

# Kernel-side: the worker's socket to the server, found as the session's code could find it (a dup of it).
WIRE = """
import os, socket, stat as _stat
def wire():
    for fd in range(3, 1024):
        try:
            if _stat.S_ISSOCK(os.fstat(fd).st_mode):
                found = socket.socket(fileno=os.dup(fd))
                if found.family == socket.AF_UNIX and found.type == socket.SOCK_STREAM:
                    return found
                found.detach()
        except OSError:
            pass
    raise RuntimeError('no socket')
"""


@pytest.fixture(params=["zygote", "cold"])
async def session(
    request: pytest.FixtureRequest, make_settings: Callable[..., Settings]
) -> AsyncIterator[tuple[Client, str]]:
    """A client and a session whose kernel holds `x = 41` and the `wire()` helper; forked and cold kernels."""
    settings = make_settings(sandbox="bwrap", kernel_zygote=request.param == "zygote")
    client, store = await open_client(settings)
    async with client:
        result = await run(client, WIRE + "x = 41\nprint('ready')")
        assert not result.is_error and "ready" in all_text(result), all_text(result)
        yield client, session_of(result)
    store.close()


async def run(client: Client, code: str, **kw: object):
    return await client.call_tool("run_code_analysis", {"code": code, "timeout_seconds": 30} | kw)


async def goes_on(client: Client, sid: str) -> None:
    """The same kernel still runs code: its variables are there."""
    after = await run(client, "print('still', x + 1)", session_id=sid)
    assert not after.is_error and "still 42" in all_text(after), all_text(after)


async def test_bytes_that_are_no_frame_are_skipped_and_the_session_goes_on(session: tuple[Client, str]) -> None:
    client, sid = session
    code = (
        "w = wire()\n"
        'w.sendall(b\'\\x80not json\\n[1, 2]\\n"text"\\n{"t": 5}\\n{"t": "stream", "id": [], "text": 1}\\n\')\n'
        "w.sendall(b'\\xff\\xff\\xff\\xffgarbage without an end')\n"  # no newline: the worker's next frame ends it
        "print('after')"
    )
    result = await run(client, code, session_id=sid)
    assert not result.is_error and "after" in all_text(result), all_text(result)
    await goes_on(client, sid)


async def test_frames_naming_another_execution_are_ignored(session: tuple[Client, str]) -> None:
    client, sid = session
    code = (
        "w = wire()\n"
        'w.sendall(b\'\\n{"t": "stream", "id": "1-other", "name": "stdout", "text": "FORGED"}\\n\')\n'
        'w.sendall(b\'\\n{"t": "done", "id": "1-other", "status": "ok"}\\n\')\n'
        "import time; time.sleep(0.2)\n"
        "print('the real end')"
    )
    result = await run(client, code, session_id=sid)
    text = all_text(result)
    assert not result.is_error and "the real end" in text and "FORGED" not in text, text
    await goes_on(client, sid)


async def test_a_line_over_the_size_limit_is_dropped_unread_and_the_run_ends(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(kernel_module, "MAX_MESSAGE_BYTES", 1024 * 1024)  # read as each kernel starts
    client, store = await open_client(make_settings(sandbox="bwrap"))
    async with client:
        # A frame's start, then far more than the limit and no end: held no further than the limit, then dropped.
        code = WIRE + "x = 41\nwire().sendall(b'{\"t\": \"stream\", ' + b'7' * 5_000_000)\nprint('after the flood')"
        result = await run(client, code)
        text = all_text(result)
        assert not result.is_error and "after the flood" in text, text[:500]
        assert "1 output message(s) were over 1 MB and were dropped unread" in text, text[:500]
        await goes_on(client, session_of(result))
    store.close()


async def test_code_that_closes_the_socket_ends_the_run_at_once_and_a_new_kernel_takes_over(
    session: tuple[Client, str],
) -> None:
    client, sid = session
    # The run's time limit is far off: only the closed socket can end it before the test's own timeout.
    code = "import socket, time\nwire().shutdown(socket.SHUT_RDWR)\ntime.sleep(3600)"
    result = await run(client, code, session_id=sid, timeout_seconds=900)
    text = all_text(result)
    assert result.is_error and "kernel process died" in text and "A new kernel was started" in text, text
    after = await run(client, "print('fresh', 'x' in globals())", session_id=sid)
    assert not after.is_error and "fresh False" in all_text(after), all_text(after)


async def test_the_socket_is_private_and_takes_no_second_connection(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(sandbox="bwrap")
    store = FileStore(settings.data_dir)
    backend = LocalBackend(settings, store)
    await backend.start()
    try:
        result = await backend.run(RunRequest(None, MANY_LINES, None), no_progress)
        # Every output of the run arrives before its result, in order.
        text = "".join(o.text for o in result.outputs if isinstance(o, TextOutput))
        assert [line for line in text.splitlines() if line.startswith("line")] == [f"line {i}" for i in range(300)]
        assert "last" in text and any(isinstance(o, ErrorOutput) for o in result.outputs)
        (sock,) = backend._runtime_dir.glob(f"k-*/{kernel_module.SOCKET_NAME}")
        assert stat.S_ISSOCK(sock.stat().st_mode)
        for private in (backend._runtime_dir, sock.parent):
            assert stat.S_IMODE(private.stat().st_mode) & 0o777 == 0o700
        code = (
            "import socket\ns = socket.socket(socket.AF_UNIX)\n"
            f"try:\n    s.connect({str(sock)!r})\n    print('connected')\n"
            "except OSError as exc:\n    print('refused', type(exc).__name__)"
        )
        second = await backend.run(RunRequest(result.session_id, code, None), no_progress)
        said = "".join(o.text for o in second.outputs if isinstance(o, TextOutput))
        assert "refused ConnectionRefusedError" in said, second
    finally:
        await backend.aclose()
        store.close()


async def test_output_reaches_the_server_while_the_code_still_runs(make_settings: Callable[..., Settings]) -> None:
    """The code waits for a file that the server side writes once it has seen the code's first line: it ends only
    if that line was sent while it ran (not at its end)."""
    settings = make_settings(sandbox="bwrap")
    store = FileStore(settings.data_dir)
    backend = LocalBackend(settings, store)
    await backend.start()
    try:
        first = await backend.run(RunRequest(None, "print('up')", None), no_progress)
        live = backend._live[first.session_id]
        seen: list[str] = []

        async def sink(event: KernelEvent) -> None:
            if isinstance(event, StreamEvent):
                seen.append(event.text)
                if "waiting" in event.text:
                    (live.workspace / "go").write_text("")

        code = "import os, time\nprint('waiting')\nwhile not os.path.exists('go'):\n    time.sleep(0.01)\nprint('went')"
        with anyio.fail_after(60):
            outcome = await live.kernel.execute(code, deadline=time.monotonic() + 20, sink=sink)
        assert outcome == "ok" and "went" in "".join(seen), (outcome, seen)
    finally:
        await backend.aclose()
        store.close()


LEFT_RUNNING = {
    "takes signals": "import threading, time\nthreading.Thread(target=time.sleep, args=(3600,), daemon=True).start()",
    "blocks SIGINT": (
        "import signal, threading, time\n"
        "def idle():\n"
        "    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})\n"
        "    time.sleep(3600)\n"
        "threading.Thread(target=idle, daemon=True).start()"
    ),
}


@pytest.mark.parametrize("thread", list(LEFT_RUNNING))
async def test_an_interrupt_between_runs_is_dropped_even_with_threads_left_running(
    make_settings: Callable[..., Settings], thread: str
) -> None:
    """A deadline or a cancelled call can interrupt just as a run ends; a thread the code left running can take the
    signal in, or (blocking it, or frozen with its session) leave it pending for the next run. Neither the worker nor
    the next run may see it."""
    settings = make_settings(sandbox="bwrap")
    store = FileStore(settings.data_dir)
    backend = LocalBackend(settings, store)
    await backend.start()
    try:
        code = LEFT_RUNNING[thread] + "\nx = 41"
        first = await backend.run(RunRequest(None, code, None), no_progress)
        assert first.status == "ok", first
        live = backend._live[first.session_id]
        await live.kernel.interrupt()
        after = await backend.run(
            RunRequest(first.session_id, "import time\ntime.sleep(0.3)\nprint(x + 1)", None), no_progress
        )
        said = "".join(o.text for o in after.outputs if isinstance(o, TextOutput))
        assert after.status == "ok" and "42" in said, after
    finally:
        await backend.aclose()
        store.close()


@pytest.mark.parametrize(("mode", "zygote"), [("bwrap", True), ("bwrap", False), ("none", False)])
async def test_a_run_at_its_time_limit_is_interrupted_in_every_launch_path(
    make_settings: Callable[..., Settings], mode: str, zygote: bool
) -> None:
    """The interrupt is SIGINT to the kernel's host pid: from the server into a forked kernel's pid namespace, into a
    cold bwrap kernel's, and to an unsandboxed kernel; each raises KeyboardInterrupt and keeps the session."""
    client, store = await open_client(make_settings(sandbox=mode, kernel_zygote=zygote))
    async with client:
        result = await run(client, "x = 41\nimport time\nwhile True:\n    time.sleep(0.01)", timeout_seconds=2)
        text = all_text(result)
        assert "KeyboardInterrupt" in text and "variables are kept" in text, text
        await goes_on(client, session_of(result))
    store.close()


async def test_what_code_relied_on_under_ipykernel_still_holds(session: tuple[Client, str]) -> None:
    """The worker keeps ipykernel's behaviour where code can see it: `Out` and `_`, top-level await, no stdin,
    output of file descriptors (os.system, C), display updates and clearing, and exit() keeping the kernel."""
    client, sid = session
    cases = [
        ("x + 1", "42"),
        ("print('last', _, Out[max(Out)])", "last 42 42"),
        ("import asyncio\nawait asyncio.sleep(0)\nprint('awaited')", "awaited"),
        ("try:\n    input()\nexcept Exception as exc:\n    print(type(exc).__name__)", "StdinNotImplementedError"),
        ("import os\nos.system('echo from a shell')", "from a shell"),
        ("import ctypes\nlibc = ctypes.CDLL(None)\nlibc.puts(b'from C')\nlibc.fflush(None)", "from C"),
        ("from IPython.display import display\nh = display('one', display_id=True)\nh.update('two')", "'two'"),
        ("exit()\nprint('exit kept', x)", "exit kept 41"),
    ]
    for code, expected in cases:
        result = await run(client, code, session_id=sid)
        assert not result.is_error and expected in all_text(result), (code, all_text(result))
    await goes_on(client, sid)


async def test_a_forked_child_at_the_end_of_the_cell_never_speaks_for_the_worker(
    session: tuple[Client, str],
) -> None:
    """A child of os.fork() shares the worker's socket. The child reaches the end of the cell at once; the parent
    goes on only once the child is asleep there (a `done` of the child's own, which would end the run before the
    parent's line, would have been sent by then). The child is a stray the run's end stops."""
    client, sid = session
    code = (
        "import os, time\nchild = os.fork()\n"
        "if child:\n"
        "    def asleep():\n"
        "        state = open(f'/proc/{child}/stat').read().rsplit(')', 1)[1].split()[0]\n"
        "        return os.path.exists('child-ended') and state == 'S'\n"
        "    while not asleep():\n"
        "        time.sleep(0.01)\n"
        "    print('the parent outlived its child')\n"
        "else:\n"
        "    open('child-ended', 'w').close()\n"
    )
    result = await run(client, code, session_id=sid)
    text = all_text(result)
    assert not result.is_error and "the parent outlived its child" in text, text
    assert "were still running after the run and were stopped" in text, text
    await goes_on(client, sid)


async def test_without_unix_sockets_only_a_connection_with_the_address_files_token_is_the_kernels(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Windows has no unix sockets: the kernel connects to a loopback port, which any local process can reach too.
    Only a connection whose first frame is `hello` with the token of the 0600 address file counts; frames that came
    with the greeting are kept for the start."""
    import json
    import socket

    from ci_mcp.backends.local import kernel_launcher

    monkeypatch.delattr(socket, "AF_UNIX")
    listener, path, token = kernel_module._listen(tmp_path)
    try:
        assert token and path.endswith(kernel_launcher.ADDRESS_SUFFIX)
        assert stat.S_IMODE((tmp_path / kernel_module.ADDRESS_NAME).stat().st_mode) == 0o600
        port = json.loads((tmp_path / kernel_module.ADDRESS_NAME).read_text())["port"]

        async def greeting(data: bytes) -> tuple[bool, list[dict[str, object]]]:
            client = socket.create_connection(("127.0.0.1", port))
            try:
                client.sendall(data)
                with anyio.fail_after(30):
                    await anyio.wait_readable(listener)
                accepted, _ = listener.accept()
                wire = kernel_module._Wire(accepted, kernel_module.MAX_MESSAGE_BYTES)
                try:
                    return await kernel_module._greeted(wire, token), wire.pending
                finally:
                    wire.close()
            finally:
                client.close()

        assert await greeting(b'\n{"t": "hello", "token": "guessed"}\n') == (False, [])
        assert await greeting(b'\n{"t": "ready"}\n') == (False, [])
        ok, kept = await greeting(b'\n{"t": "hello", "token": "' + token.encode() + b'"}\n{"t": "ready"}\n')
        assert ok and kept == [{"t": "ready"}]
        worker = kernel_launcher.connect(path)  # the worker's own way in: the port and token of the address file
        try:
            with anyio.fail_after(30):
                await anyio.wait_readable(listener)
            wire = kernel_module._Wire(listener.accept()[0], kernel_module.MAX_MESSAGE_BYTES)
            assert await kernel_module._greeted(wire, token)
            wire.close()
        finally:
            worker.close()
    finally:
        listener.close()
