"""The MCP surface of the local backend, through the in-memory MCP client with real kernels. What the server does
whatever the backend (argument checks, path policy, save_to, rendering) is tested without kernels in tests/surface/."""

from __future__ import annotations

import base64
from pathlib import Path

import anyio
import pytest
from mcp import Client
from mcp_types import CallToolResult, TextResourceContents

from ci_mcp.backends.local import sandbox
from ci_mcp.backends.local.state import LocalSessionState
from ci_mcp.sessions import SessionStore
from ci_mcp.settings import Settings
from tests.conftest import (
    NIFTY_CSV,
    all_text,
    generated_ids,
    images,
    links,
    open_client,
    session_of,
    texts,
    uploaded_id,
)

pytestmark = pytest.mark.anyio


async def run(client: Client, code: str, **kw: object) -> CallToolResult:
    return await client.call_tool("run_code_analysis", {"code": code, **kw})


async def test_tool_list_has_the_public_tools_without_output_schemas(client: Client) -> None:
    tools = {t.name: t for t in (await client.list_tools()).tools}
    assert {"upload_file", "run_code_analysis", "fetch_generated_file"} <= set(tools)
    for tool in tools.values():
        assert tool.output_schema is None, tool.name  # image blocks must survive in every client
        assert tool.description and len(tool.description) > 60
    run_props = tools["run_code_analysis"].input_schema["properties"]
    assert {"code", "request", "file_ids", "session_id", "timeout_seconds"} <= set(run_props)
    assert "roots" not in tools["upload_file"].input_schema["properties"]
    if sandbox.bwrap_works()[0]:
        assert "/mnt/data" in (tools["run_code_analysis"].description or "")
    else:  # said plainly when the sandbox cannot provide /mnt/data
        assert "/mnt/data does not exist here" in (tools["run_code_analysis"].description or "")


async def test_upload_by_path_returns_id_size_and_media_type(client: Client, allowed: Path) -> None:
    (allowed / "data.csv").write_text("a,b\n1,2\n")
    result = await client.call_tool("upload_file", {"path": str(allowed / "data.csv")})
    text = all_text(result)
    assert not result.is_error
    assert uploaded_id(result).startswith("file-")
    assert "8 bytes" in text and "text/csv" in text
    where = "/mnt/data/data.csv" if sandbox.bwrap_works()[0] else "as 'data.csv' in its working directory"
    assert where in text


async def test_upload_inline_base64_is_readable_by_the_code(client: Client) -> None:
    payload = base64.b64encode(b"x,y\n3,4\n5,6\n").decode()
    up = await client.call_tool("upload_file", {"content_base64": payload, "filename": "inline.csv"})
    fid = uploaded_id(up)
    result = await run(client, "import pandas as pd; print(pd.read_csv('inline.csv').y.sum())", file_ids=[fid])
    assert "10" in all_text(result)


async def test_state_is_kept_across_calls_of_one_session(client: Client) -> None:
    first = await run(client, "answer = 6 * 7")
    sid = session_of(first)
    second = await run(client, "print(answer)", session_id=sid)
    assert session_of(second) == sid
    assert "42" in all_text(second)


@pytest.mark.usefixtures("each_walk")
async def test_two_sessions_do_not_share_variables_or_files(client: Client) -> None:
    a = await run(client, "secret = 'alpha'\nopen('only_a.txt', 'w').write('a')")
    b = await run(client, "import os\nprint('secret' in globals(), os.path.exists('only_a.txt'))")
    assert session_of(a) != session_of(b)
    assert "False False" in all_text(b)


async def test_a_matplotlib_figure_becomes_an_image_block_without_saving(client: Client) -> None:
    result = await run(client, "import matplotlib.pyplot as plt\nplt.plot([1, 3, 2])\nplt.title('t')")
    pictures = images(result)
    assert len(pictures) == 1 and pictures[0].startswith(b"\x89PNG")
    assert "figure-1.png" in generated_ids(result)


@pytest.mark.parametrize("before_pyplot", [True, False])
async def test_figures_left_open_come_back_whatever_backend_the_code_chose(client: Client, before_pyplot: bool) -> None:
    agg = "import matplotlib\nmatplotlib.use('Agg')\n"
    code = (agg if before_pyplot else "") + "import matplotlib.pyplot as plt\n" + ("" if before_pyplot else agg)
    result = await run(client, code + "plt.plot([1, 3, 2])\nplt.figure()\nplt.bar(['a'], [1])")
    pictures = images(result)
    assert len(pictures) == 2 and all(p.startswith(b"\x89PNG") for p in pictures), all_text(result)
    again = await run(client, "print(len(plt.get_fignums()))", session_id=session_of(result))
    assert images(again) == [] and "0" in texts(again)[1]


@pytest.mark.usefixtures("each_walk")
async def test_a_png_written_by_the_code_is_an_image_block_and_fetchable(client: Client) -> None:
    code = (
        "import matplotlib\nmatplotlib.use('Agg')\nimport matplotlib.pyplot as plt\n"
        "fig = plt.figure(); plt.bar(['a', 'b'], [1, 2]); fig.savefig('chart.png'); plt.close(fig)"
    )
    result = await run(client, code)
    pictures = images(result)
    assert len(pictures) == 1 and pictures[0].startswith(b"\x89PNG")
    fid = generated_ids(result)["chart.png"]
    fetched = await client.call_tool("fetch_generated_file", {"file_id": fid})
    assert images(fetched) == pictures


@pytest.mark.usefixtures("each_walk")
async def test_a_written_file_becomes_a_resource_link_fetchable_as_text_and_resource(client: Client) -> None:
    result = await run(client, "open('out.csv', 'w').write('k,v\\n1,2\\n')")
    (link,) = links(result)
    assert link.name == "out.csv" and link.mime_type == "text/csv"
    fid = generated_ids(result)["out.csv"]
    fetched = await client.call_tool("fetch_generated_file", {"file_id": fid})
    assert texts(fetched)[-1] == "k,v\n1,2\n"
    read = await client.read_resource(str(link.uri))
    (contents,) = read.contents
    assert isinstance(contents, TextResourceContents) and contents.text == "k,v\n1,2\n"
    assert contents.mime_type == "text/csv"


async def test_run_returns_traceback_as_data_when_code_raises(client: Client) -> None:
    result = await run(client, "def f():\n    return 1/0\nf()")
    assert not result.is_error
    text = all_text(result)
    assert "ZeroDivisionError: division by zero" in text and "f()" in text


async def test_a_syntax_error_is_reported_with_its_line(client: Client) -> None:
    result = await run(client, "x = (1,\nprint('x')")
    assert not result.is_error
    assert "SyntaxError" in all_text(result)


async def test_time_limit_interrupts_an_infinite_loop_and_the_session_continues(client: Client) -> None:
    first = await run(client, "kept = 'yes'")
    sid = session_of(first)
    stuck = await run(client, "while True:\n    pass", session_id=sid, timeout_seconds=1)
    assert stuck.is_error
    assert "time limit of 1 s" in all_text(stuck)
    after = await run(client, "print(kept)", session_id=sid)
    assert not after.is_error and "yes" in all_text(after)


async def test_a_loop_that_ignores_interrupts_gets_its_kernel_restarted(client: Client) -> None:
    code = "import time\nwhile True:\n    try:\n        time.sleep(0.05)\n    except KeyboardInterrupt:\n        pass"
    first = await run(client, "x = 1")
    sid = session_of(first)
    stuck = await run(client, code, session_id=sid, timeout_seconds=1)
    assert stuck.is_error and "kernel was restarted" in all_text(stuck)
    after = await run(client, "print('x' in globals())", session_id=sid)
    assert "False" in all_text(after)


async def test_kernel_death_is_reported_and_the_session_recovers(client: Client) -> None:
    first = await run(client, "open('kept.txt', 'w').write('k')")
    sid = session_of(first)
    died = await run(client, "import os; os._exit(1)", session_id=sid)
    assert died.is_error and "kernel process died" in all_text(died)
    after = await run(client, "print(open('kept.txt').read())", session_id=sid)
    assert not after.is_error and "k" in texts(after)[1]


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        ({"code": "1", "session_id": "sess-000000000000000000000000"}, "No session with id"),
        ({"code": "1", "session_id": "file-000000000000000000000000"}, "looks like a file id"),
        ({"code": "1", "file_ids": ["file-000000000000000000000000"]}, "No file with id"),
        ({"request": "plot revenue"}, "pass the analysis as `code`"),
        ({"code": "1", "timeout_seconds": 100000}, "timeout_seconds may be at most"),
    ],
)
async def test_bad_run_arguments_get_a_clear_error(client: Client, arguments: dict[str, object], expected: str) -> None:
    result = await client.call_tool("run_code_analysis", arguments)
    assert result.is_error
    assert expected in all_text(result)


async def test_long_output_is_capped_and_the_full_text_is_a_generated_file(make_settings) -> None:
    c, store = await open_client(make_settings(text_output_limit=1000))
    async with c:
        result = await run(c, "for i in range(5000):\n    print(f'line {i}')")
        shown = texts(result)[1]
        assert len(shown) == 1000
        fid = generated_ids(result)["output-run1.txt"]
        full = store.read(fid).decode()
        assert full.count("\n") == 5000 and full.endswith("line 4999\n")
        assert "The full output is file" in all_text(result)
    store.close()


async def test_progress_is_reported_while_a_run_goes_on(settings: Settings) -> None:
    """The run goes on until the client has seen a progress report of it running (the code waits for a file the
    progress callback writes), so the test orders the two by events, however slow the machine."""
    seen: list[tuple[float, float | None, str | None]] = []
    c, store = await open_client(settings)

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append((progress, total, message))
        if "running" in (message or ""):
            for record in SessionStore(store.data_dir).list(LocalSessionState):
                (Path(record.state.workspace) / "go").touch()

    code = "import os, time\nwhile not os.path.exists('go'):\n    time.sleep(0.02)"
    async with c:
        with anyio.fail_after(60):  # a bound, not a measurement
            result = await c.call_tool(
                "run_code_analysis", {"code": code, "timeout_seconds": 30}, progress_callback=on_progress
            )
    store.close()
    assert not result.is_error, all_text(result)
    running = [s for s in seen if "running" in (s[2] or "")]
    assert running and running[0][1] == 30 and "of at most 30 s" in (running[0][2] or ""), seen


@pytest.mark.usefixtures("each_walk")
async def test_the_walk_through_csv_gives_a_transportation_bar_chart(client: Client, allowed: Path) -> None:
    (allowed / NIFTY_CSV.name).write_bytes(NIFTY_CSV.read_bytes())
    fid = uploaded_id(await client.call_tool("upload_file", {"path": str(allowed / NIFTY_CSV.name)}))
    code = (
        "import pandas as pd\nimport matplotlib.pyplot as plt\n"
        f"df = pd.read_csv('{NIFTY_CSV.name}')\n"
        "t = df[df['sector'] == 'TRANSPORTATION']\n"
        "ax = t.plot.bar(x='name', y='operating_profit', legend=False)\n"
        "ax.set_ylabel('Operating profit'); plt.tight_layout()\n"
        "print(len(t), round(t['operating_profit'].sum(), 1))"
    )
    result = await run(client, code, file_ids=[fid])
    assert "9 7351.2" in all_text(result)
    (png,) = images(result)
    assert png.startswith(b"\x89PNG")
    fetched = await client.call_tool("fetch_generated_file", {"file_id": generated_ids(result)["figure-1.png"]})
    assert images(fetched) == [png]


@pytest.mark.usefixtures("each_walk")
async def test_save_to_refuses_a_symlink_target_and_keeps_generated_names_safe(client: Client, allowed: Path) -> None:
    result = await run(client, "import os\nos.makedirs('a/b', exist_ok=True)\nopen('a/b/x.txt', 'w').write('x')")
    fid = generated_ids(result)["a/b/x.txt"]
    saved = await client.call_tool("fetch_generated_file", {"file_id": fid, "save_to": str(allowed)})
    assert not saved.is_error and (allowed / "x.txt").read_text() == "x"  # directories stripped on the host
    (allowed / "link.txt").symlink_to(allowed / "victim.txt")
    linked = await client.call_tool(
        "fetch_generated_file", {"file_id": fid, "save_to": str(allowed / "link.txt"), "overwrite": True}
    )
    assert linked.is_error and "symbolic link" in all_text(linked)
    assert not (allowed / "victim.txt").exists()


async def test_a_cold_kernel_start_reports_progress_without_a_made_up_total(client: Client) -> None:
    seen: list[tuple[float, float | None, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append((progress, total, message))

    result = await client.call_tool("run_code_analysis", {"code": "print(1)"}, progress_callback=on_progress)
    assert not result.is_error
    assert seen and "starting a Python kernel" in (seen[0][2] or "") and seen[0][1] is None, seen
