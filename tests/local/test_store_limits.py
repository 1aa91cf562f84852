"""What the server does with what it stores: exact upload limits, bounded file lists and resource reads, a store
that does not grow without bound, session-directory accounting, and a full disk. Through the in-memory MCP client."""

from __future__ import annotations

import base64
import errno
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import pytest
from mcp.shared.exceptions import MCPError
from mcp_types import CallToolResult, TextResourceContents

import ci_mcp.server as server_module
from ci_mcp.backends.local import sandbox, workspace
from ci_mcp.backends.local.backend import LocalBackend
from ci_mcp.backends.local.kernel import Kernel
from ci_mcp.sessions import SessionStore
from ci_mcp.settings import Settings
from ci_mcp.store import FileStore, no_space
from ci_mcp.textsafe import quote
from ci_mcp.uploads import MAX_FILE_IDS
from tests.conftest import all_text, generated_ids, open_client, session_of, texts, uploaded_id

pytestmark = pytest.mark.anyio


@pytest.fixture
def no_pool(make_settings: Callable[..., Settings]) -> Callable[..., Settings]:
    """Settings for tests that need no kernel ahead of time."""

    def make(**kw: object) -> Settings:
        return make_settings(kernel_pool_size=0, **kw)

    return make


async def test_inline_upload_limit_is_checked_on_the_exact_decoded_size(no_pool: Callable[..., Settings]) -> None:
    c, store = await open_client(no_pool(max_inline_upload_bytes=1000))
    async with c:
        at_limit = await c.call_tool(
            "upload_file", {"content_base64": base64.b64encode(b"a" * 1000).decode(), "filename": "ok.bin"}
        )
        assert "1,000 bytes" in all_text(at_limit) and uploaded_id(at_limit)
        for size in (1001, 1002):  # within the old estimate from the base64 length
            over = await c.call_tool(
                "upload_file", {"content_base64": base64.b64encode(b"b" * size).decode(), "filename": "big.bin"}
            )
            assert over.is_error, all_text(over)
            assert f"{size:,} bytes once decoded" in all_text(over) and "1,000" in all_text(over)
        assert [f.name for f in store.list()] == ["ok.bin"]
    store.close()


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        ("YWJj$GVm", "characters other than"),
        ("YWJjZA", "not a multiple of 4"),
        ("YW=JjZA==", "characters other than"),
        ("ÿÿÿÿ", "characters other than"),
    ],
)
async def test_invalid_base64_gets_a_clear_error(no_pool: Callable[..., Settings], payload: str, expected: str) -> None:
    c, store = await open_client(no_pool())
    async with c:
        result = await c.call_tool("upload_file", {"content_base64": payload, "filename": "x.csv"})
        assert result.is_error and "not valid base64" in all_text(result) and expected in all_text(result)
        assert store.list() == []
    store.close()


async def test_base64_with_line_breaks_or_a_data_url_prefix_is_accepted(no_pool: Callable[..., Settings]) -> None:
    data = bytes(range(256)) * 3
    wrapped = base64.encodebytes(data).decode()  # MIME style: a newline every 76 characters
    c, store = await open_client(no_pool())
    async with c:
        for payload in (wrapped, "data:application/octet-stream;base64," + base64.b64encode(data).decode()):
            fid = uploaded_id(await c.call_tool("upload_file", {"content_base64": payload, "filename": "d.bin"}))
            assert store.read(fid) == data
    store.close()


async def test_file_ids_are_deduplicated_and_placed_off_the_event_loop(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    loop_thread = threading.get_ident()
    placed_in: list[int] = []
    real_place = workspace.place

    def recording_place(source: Path, ws: Path, name: str) -> str:
        placed_in.append(threading.get_ident())
        return real_place(source, ws, name)

    monkeypatch.setattr(workspace, "place", recording_place)
    c, store = await open_client(make_settings())
    async with c:
        payload = base64.b64encode(b"k\n1\n").decode()
        fid = uploaded_id(await c.call_tool("upload_file", {"content_base64": payload, "filename": "in.csv"}))
        result = await c.call_tool(
            "run_code_analysis", {"code": "print(open('in.csv').read().split())", "file_ids": [fid, fid, f" {fid} "]}
        )
        assert "['k', '1']" in all_text(result), all_text(result)
        assert 'placed in the working directory: "in.csv".' in all_text(result)
        assert len(placed_in) == 1 and loop_thread not in placed_in
    store.close()


async def test_too_many_file_ids_get_a_clear_error(no_pool: Callable[..., Settings]) -> None:
    c, store = await open_client(no_pool())
    async with c:
        ids = [f"file-{i:024x}" for i in range(MAX_FILE_IDS + 1)]
        result = await c.call_tool("run_code_analysis", {"code": "print(1)", "file_ids": ids})
        assert result.is_error and f"at most {MAX_FILE_IDS}" in all_text(result), all_text(result)
        assert "No file with id" not in all_text(result)
    store.close()


async def test_resources_read_refuses_a_file_over_the_inline_limit_and_reads_off_the_loop(
    no_pool: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    loop_thread = threading.get_ident()
    opened_in: list[int] = []

    def recording_open(*args: Any, **kw: Any) -> Any:
        opened_in.append(threading.get_ident())
        return open(*args, **kw)

    monkeypatch.setattr(server_module, "open", recording_open, raising=False)
    c, store = await open_client(no_pool(inline_text_fetch_bytes=1000, inline_image_bytes=2000))
    async with c:
        small = uploaded_id(
            await c.call_tool(
                "upload_file", {"content_base64": base64.b64encode(b"s" * 2000).decode(), "filename": "s.csv"}
            )
        )
        big = uploaded_id(
            await c.call_tool(
                "upload_file", {"content_base64": base64.b64encode(b"b" * 2001).decode(), "filename": "b.csv"}
            )
        )
        (contents,) = (await c.read_resource(f"ci-mcp://files/{small}")).contents
        assert isinstance(contents, TextResourceContents) and contents.text == "s" * 2000
        assert opened_in and loop_thread not in opened_in
        opened_in.clear()
        with pytest.raises(MCPError) as refused:
            await c.read_resource(f"ci-mcp://files/{big}")
        message = str(refused.value)
        assert "2,001 bytes" in message and "fetch_generated_file" in message and "save_to" in message, message
        assert opened_in == []  # never read into memory
    store.close()


PREALLOCATE = """
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong]
fd = os.open({name!r}, os.O_WRONLY | os.O_CREAT, 0o644)
print('fallocate', libc.fallocate(fd, 1, 0, 3 * 1024 * 1024), os.fstat(fd).st_size)  # 1 = FALLOC_FL_KEEP_SIZE
os.close(fd)
"""


@pytest.mark.parametrize(
    "code",
    [
        PREALLOCATE.format(name="empty-looking.bin"),  # 0 bytes apparent, 3 MB allocated past the end
        PREALLOCATE.format(name=".cache/hidden.bin").replace(
            "import ctypes, os", "import ctypes, os; os.mkdir('.cache')"
        ),
        "for i in range(600):\n    open(f'tiny{i}.txt', 'w').write('x')\nprint('written')",  # 600 B apparent, ~2.4 MB
    ],
    ids=["preallocated", "preallocated-in-dot-dir", "many-small-files"],
)
@pytest.mark.usefixtures("each_walk")
async def test_the_session_directory_cap_counts_allocated_size(
    make_settings: Callable[..., Settings], code: str
) -> None:
    c, store = await open_client(make_settings(max_session_dir_mb=1))
    async with c:
        result = await c.call_tool("run_code_analysis", {"code": code})
        text = all_text(result)
        assert "fallocate 0 0" in text or "written" in text, text
        assert "grew past its limit of 1 MB" in text, text
        du = await c.call_tool(
            "run_code_analysis",
            {
                "code": "import os\nprint(sum(os.stat(os.path.join(d, f)).st_blocks * 512 "
                "for d, _, fs in os.walk('.') for f in fs))",
                "session_id": session_of(result),
            },
        )
        assert int(texts(du)[1]) <= 1024 * 1024, all_text(du)
    store.close()


@pytest.mark.usefixtures("each_walk")
async def test_a_sparse_file_counts_by_its_apparent_size(make_settings: Callable[..., Settings]) -> None:
    c, store = await open_client(make_settings(max_session_dir_mb=1))
    async with c:
        code = "with open('sparse.bin', 'wb') as f:\n    f.seek(5 * 1024 * 1024)\n    f.write(b'x')"
        result = await c.call_tool("run_code_analysis", {"code": code})
        assert "grew past its limit of 1 MB" in all_text(result) and "sparse.bin" in all_text(result)
    store.close()


def _blob_bytes(store: FileStore) -> int:
    """Disk used by the store's blobs, each inode once."""
    inodes = {}
    for blob in store.files_dir.iterdir():
        st = blob.stat()
        inodes[st.st_ino] = st.st_blocks * 512
    return sum(inodes.values())


@pytest.mark.usefixtures("each_walk")
async def test_a_file_only_touched_again_does_not_grow_the_store(make_settings: Callable[..., Settings]) -> None:
    c, store = await open_client(make_settings())
    async with c:
        first = await c.call_tool(
            "run_code_analysis", {"code": "import os\nopen('data.bin', 'wb').write(os.urandom(1024 * 1024))"}
        )
        sid = session_of(first)
        ids = {generated_ids(first)["data.bin"]}
        used = _blob_bytes(store)
        for _ in range(3):
            again = await c.call_tool(
                "run_code_analysis", {"code": "import os; os.utime('data.bin')", "session_id": sid}
            )
            ids.add(generated_ids(again)["data.bin"])  # still reported: it changed on disk
        assert len(ids) == 1 and len(store.list(sid)) == 1
        copy = await c.call_tool(
            "run_code_analysis", {"code": "import shutil; shutil.copy('data.bin', 'copy.bin')", "session_id": sid}
        )
        copy_id = generated_ids(copy)["copy.bin"]
        assert copy_id not in ids and store.read(copy_id) == store.read(ids.pop())
        assert _blob_bytes(store) == used  # same bytes under another name: stored once
    store.close()


@pytest.mark.usefixtures("each_walk")
async def test_the_store_quota_refuses_new_content_with_a_message_naming_the_setting(
    make_settings: Callable[..., Settings],
) -> None:
    c, store = await open_client(make_settings(max_store_mb=1))
    async with c:

        async def upload(data: bytes, name: str) -> CallToolResult:
            return await c.call_tool(
                "upload_file", {"content_base64": base64.b64encode(data).decode(), "filename": name}
            )

        a, b = os.urandom(600 * 1024), os.urandom(600 * 1024)
        first = uploaded_id(await upload(a, "a.bin"))
        refused = await upload(b, "b.bin")
        assert refused.is_error and "CI_MCP_MAX_STORE_MB" in all_text(refused) and "b.bin" in all_text(refused)
        assert uploaded_id(await upload(a, "a.bin")) == first  # identical content costs nothing
        assert uploaded_id(await upload(a, "renamed.bin")) != first
        run = await c.call_tool(
            "run_code_analysis",
            {"code": "import os\nopen('new.bin', 'wb').write(os.urandom(600 * 1024))\nprint('done')"},
        )
        text = all_text(run)
        assert not run.is_error and "done" in text and session_of(run)
        assert "new.bin" in text and "CI_MCP_MAX_STORE_MB" in text and "new.bin" not in generated_ids(run)
        assert store.used_bytes() <= 1024 * 1024
    store.close()


def _disk_full(*args: object, **kw: object) -> NoReturn:
    raise OSError(errno.ENOSPC, "No space left on device")


async def test_a_full_disk_on_upload_says_so_and_names_the_data_directory(
    no_pool: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = no_pool()
    monkeypatch.setattr(FileStore, "_commit", _disk_full)
    c, store = await open_client(settings)
    async with c:
        result = await c.call_tool(
            "upload_file", {"content_base64": base64.b64encode(b"a,b\n").decode(), "filename": "a.csv"}
        )
        text = all_text(result)
        assert result.is_error and "No space left" in text and str(settings.data_dir) in text, text
        assert "Error executing tool" not in text
        assert store.list() == [] and list(store.tmp_dir.iterdir()) == []
    store.close()


FULL_RUN = """
import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt
print('before the disk filled')
print('x' * 300)
open('out.csv', 'w').write('a,b\\n1,2\\n')
plt.plot([1, 2, 3])
print('after')
"""


@pytest.mark.usefixtures("each_walk")
async def test_a_full_disk_during_a_run_keeps_the_output_and_the_session(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = make_settings(text_output_limit=200)
    c, store = await open_client(settings)
    async with c:
        with monkeypatch.context() as m:
            m.setattr(FileStore, "_commit", _disk_full)
            result = await c.call_tool("run_code_analysis", {"code": FULL_RUN})
        text = all_text(result)
        assert "Error executing tool" not in text
        sid = session_of(result)
        assert "before the disk filled" in text, text
        assert "No space left" in text and str(settings.data_dir) in text, text
        assert "out.csv" in text  # named among the files not kept
        assert store.list() == []
        again = await c.call_tool("run_code_analysis", {"code": "print(open('out.csv').read())", "session_id": sid})
        assert "a,b" in all_text(again) and not again.is_error, all_text(again)
    store.close()


async def test_a_full_disk_while_placing_inputs_returns_the_session_id(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = make_settings()
    c, store = await open_client(settings)
    async with c:
        fid = uploaded_id(
            await c.call_tool("upload_file", {"content_base64": base64.b64encode(b"k\n").decode(), "filename": "k.csv"})
        )
        with monkeypatch.context() as m:
            m.setattr(workspace, "place", _disk_full)
            result = await c.call_tool("run_code_analysis", {"code": "print(1)", "file_ids": [fid]})
        text = all_text(result)
        assert result.is_error and "No space left" in text and str(settings.data_dir) in text, text
        sid = session_of(result)
        again = await c.call_tool("run_code_analysis", {"code": "print(6 * 7)", "file_ids": [fid], "session_id": sid})
        assert "42" in all_text(again), all_text(again)
    store.close()


async def test_an_unexpected_error_inside_a_run_keeps_the_session_id_and_the_output(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    real_execute = Kernel.execute
    broken = {"left": 1}

    async def execute_then_fail(self: Kernel, code: str, **kw: Any) -> Any:
        outcome = await real_execute(self, code, **kw)
        if "BREAK" in code and broken["left"]:
            broken["left"] -= 1
            raise RuntimeError("the kernel channel went away")
        return outcome

    def bookkeeping_fails(self: SessionStore, session_id: str, **kw: Any) -> None:
        raise no_space(self.data_dir, "session could not be updated")

    monkeypatch.setattr(Kernel, "execute", execute_then_fail)
    monkeypatch.setattr(SessionStore, "update", bookkeeping_fails)
    c, store = await open_client(make_settings())
    async with c:
        result = await c.call_tool("run_code_analysis", {"code": "print('partial output')  # BREAK"})
        text = all_text(result)
        sid = session_of(result)
        assert result.is_error and "partial output" in text, text
        assert "RuntimeError: the kernel channel went away" in text and "Error executing tool" not in text
        again = await c.call_tool("run_code_analysis", {"code": "print(6 * 7)", "session_id": sid})
        assert "42" in all_text(again) and not again.is_error, all_text(again)
    store.close()


@pytest.mark.parametrize(
    ("given", "seen"),
    [
        ("données (1) – été.csv", None),
        ("数据 #2.xlsx", None),
        ("report\x1b[31m\nred.txt", "report_[31m_red.txt"),
        ("C:\\Users\\me\\sales.csv", "sales.csv"),
        (".ci-mcp-trick.tmp", "_ci-mcp-trick.tmp"),
    ],
)
@pytest.mark.usefixtures("each_walk")
async def test_upload_reports_the_exact_name_the_code_sees(
    make_settings: Callable[..., Settings], given: str, seen: str | None
) -> None:
    c, store = await open_client(make_settings())
    async with c:
        payload = base64.b64encode(b"k\n1\n").decode()
        up = await c.call_tool("upload_file", {"content_base64": payload, "filename": given})
        text = all_text(up)
        name = seen or given
        where = f"at /mnt/data/{name}" if sandbox.bwrap_works()[0] else f"as {quote(name)} in its working directory"
        assert where in text, text
        assert ("was changed to" in text) == (seen is not None), text
        if seen is not None:
            assert quote(given) in text and "\x1b" not in text
        listing = await c.call_tool(
            "run_code_analysis",
            {"code": "import os; print(repr(sorted(os.listdir('.'))))", "file_ids": [uploaded_id(up)]},
        )
        assert repr([name]) in all_text(listing), all_text(listing)
    store.close()


@pytest.mark.usefixtures("each_walk")
@pytest.mark.parametrize("restart_works", [True, False])
async def test_a_run_the_server_cannot_follow_restarts_the_kernel_and_says_so_only_when_that_worked(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch, restart_works: bool
) -> None:
    real_execute = Kernel.execute

    async def execute_then_lose_track(self: Kernel, code: str, **kw: Any) -> Any:
        outcome = await real_execute(self, code, **kw)
        if "LOSE" in code:
            raise RuntimeError("the output stream broke")
        return outcome

    async def restart_fails(self: LocalBackend, kernel: Kernel) -> None:
        raise RuntimeError("no kernel could be started")

    monkeypatch.setattr(Kernel, "execute", execute_then_lose_track)
    if not restart_works:
        monkeypatch.setattr(LocalBackend, "_restart", restart_fails)
    c, store = await open_client(make_settings())
    async with c:
        result = await c.call_tool("run_code_analysis", {"code": "print('seen before')  # LOSE"})
        text = all_text(result)
        assert session_of(result) and "following the run failed inside the server" in text, text
        assert "the output stream broke" in text, text
        assert ("The kernel was restarted" in text) == restart_works, text
        assert ("restarting the kernel failed" in text) != restart_works, text
    store.close()


async def test_a_failed_kernel_restart_after_a_crash_keeps_the_result(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    real_execute = Kernel.execute

    async def execute_then_die(self: Kernel, code: str, **kw: Any) -> Any:
        outcome = await real_execute(self, code, **kw)
        return "died" if "DIE" in code else outcome

    async def restart_fails(self: LocalBackend, kernel: Kernel) -> None:
        raise RuntimeError("no kernel could be started")

    monkeypatch.setattr(Kernel, "execute", execute_then_die)
    monkeypatch.setattr(LocalBackend, "_restart", restart_fails)
    c, store = await open_client(make_settings())
    async with c:
        result = await c.call_tool("run_code_analysis", {"code": "print('seen before')  # DIE"})
        text = all_text(result)
        assert session_of(result) and result.is_error and "seen before" in text, text
        assert "restarting the kernel failed" in text and "no kernel could be started" in text, text
    store.close()
