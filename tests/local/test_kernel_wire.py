"""The server's side of the kernel protocol (issue 12): unsigned messages on private sockets, only JSON decoded,
and every output of a run before its result without ipykernel's post-execute sleep."""

from __future__ import annotations

import json
import stat
from collections.abc import Callable

import pytest

from ci_mcp.backends.local.backend import LocalBackend
from ci_mcp.models import ErrorOutput, RunRequest, TextOutput, no_progress
from ci_mcp.settings import Settings
from ci_mcp.store import FileStore

pytestmark = pytest.mark.anyio

MANY_LINES = "import sys\nfor i in range(300):\n    print('line', i)\nsys.stderr.write('last\\n')\n1/0"

# What a hostile kernel could put on its iopub socket: a message whose parts are not JSON.
NOT_JSON = """
k = get_ipython().kernel
k.iopub_socket.send_multipart([b"x", b"<IDS|MSG>", b"", b"\\x80not json", b"\\x80", b"{}", b"\\x80"])
print("after")
"""


async def test_messages_are_unsigned_on_sockets_only_the_server_and_its_kernel_reach(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings()
    store = FileStore(settings.data_dir)
    backend = LocalBackend(settings, store)
    await backend.start()
    try:
        result = await backend.run(RunRequest(None, MANY_LINES, None), no_progress)
        text = "".join(o.text for o in result.outputs if isinstance(o, TextOutput))
        assert [line for line in text.splitlines() if line.startswith("line")] == [f"line {i}" for i in range(300)]
        assert "last" in text and any(isinstance(o, ErrorOutput) for o in result.outputs)
        (conn,) = backend._runtime_dir.glob("k-*/kernel.json")
        assert json.loads(conn.read_text())["key"] == ""
        for private in (backend._runtime_dir, conn.parent):
            assert stat.S_IMODE(private.stat().st_mode) & 0o777 == 0o700
        # No fixed sleep after each execution: the order of output and `idle` on iopub ends a run.
        slept = await backend.run(
            RunRequest(result.session_id, "print('sleep', get_ipython().kernel._execute_sleep)", None), no_progress
        )
        assert "sleep 0.0" in "".join(o.text for o in slept.outputs if isinstance(o, TextOutput)), slept
        # A message that is not JSON is dropped, never decoded otherwise, and the run carries on.
        hostile = await backend.run(RunRequest(result.session_id, NOT_JSON, None), no_progress)
        assert hostile.status == "ok", hostile
        assert "after" in "".join(o.text for o in hostile.outputs if isinstance(o, TextOutput))
    finally:
        await backend.aclose()
        store.close()
