"""The contract every backend keeps, through the MCP client: the same calls and the same code on local kernels and
on both Azure backends (where the agent is asked to run exactly the given code). Differences are named here."""

from __future__ import annotations

import pytest
from mcp import Client

from tests.conftest import NIFTY_CSV, all_text, generated_ids, images, links, session_of, texts, uploaded_id

pytestmark = pytest.mark.anyio

Ctx = tuple[Client, object]


async def run(client: Client, code: str, **kw: object):
    return await client.call_tool("run_code_analysis", {"code": code, **kw})


async def test_printed_text_comes_back_with_a_session_id(contract_client: Ctx) -> None:
    client, _ = contract_client
    result = await run(client, "print('hello from', 6 * 7)")
    assert not result.is_error, all_text(result)
    assert session_of(result).startswith("sess-")
    assert "hello from 42" in all_text(result)


async def test_state_persists_within_a_session(contract_client: Ctx) -> None:
    client, _ = contract_client
    first = await run(client, "shared_value = 1234")
    again = await run(client, "print(shared_value + 1)", session_id=session_of(first))
    assert session_of(again) == session_of(first)
    assert "1235" in all_text(again)


async def test_an_uploaded_csv_is_read_from_mnt_data_and_charted(contract_client: Ctx) -> None:
    client, allowed = contract_client
    (allowed / NIFTY_CSV.name).write_bytes(NIFTY_CSV.read_bytes())  # type: ignore[operator]
    fid = uploaded_id(await client.call_tool("upload_file", {"path": str(allowed / NIFTY_CSV.name)}))  # type: ignore[operator]
    code = (
        "import pandas as pd\nimport matplotlib\nmatplotlib.use('Agg')\nimport matplotlib.pyplot as plt\n"
        f"df = pd.read_csv('/mnt/data/{NIFTY_CSV.name}')\n"
        "t = df[df['sector'] == 'TRANSPORTATION']\n"
        "fig, ax = plt.subplots(); ax.bar(t['name'], t['operating_profit']); fig.savefig('/mnt/data/transport.png')\n"
        "print('rows', len(t))"
    )
    result = await run(client, code, file_ids=[fid])
    assert not result.is_error, all_text(result)
    assert "rows 9" in all_text(result)
    pictures = images(result)
    assert pictures and all(p.startswith(b"\x89PNG") for p in pictures)
    chart_id = generated_ids(result)["transport.png"]
    fetched = await client.call_tool("fetch_generated_file", {"file_id": chart_id})
    assert images(fetched)[0].startswith(b"\x89PNG")


async def test_a_non_image_file_is_a_resource_link_and_fetchable(contract_client: Ctx) -> None:
    client, _ = contract_client
    result = await run(client, "open('/mnt/data/summary.csv', 'w').write('k,v\\n1,2\\n')")
    assert not result.is_error, all_text(result)
    names = {link.name.rsplit("/", 1)[-1] for link in links(result)}
    assert "summary.csv" in names
    fid = next(v for k, v in generated_ids(result).items() if k.endswith("summary.csv"))
    fetched = await client.call_tool("fetch_generated_file", {"file_id": fid})
    assert "k,v\n1,2\n" in texts(fetched)


async def test_an_exception_is_data_with_its_traceback(contract_client: Ctx) -> None:
    client, _ = contract_client
    result = await run(client, "raise ValueError('bad input row')")
    assert not result.is_error
    assert "ValueError" in all_text(result) and "bad input row" in all_text(result)


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        ({"code": "1", "session_id": "sess-000000000000000000000000"}, "No session with id"),
        ({"code": "1", "file_ids": ["file-000000000000000000000000"]}, "No file with id"),
        ({"code": "1", "timeout_seconds": 100000}, "timeout_seconds may be at most"),
    ],
)
async def test_unknown_ids_and_bad_limits_are_clear_errors(
    contract_client: Ctx, arguments: dict[str, object], expected: str
) -> None:
    client, _ = contract_client
    result = await client.call_tool("run_code_analysis", arguments)
    assert result.is_error and expected in all_text(result)
    assert "still" in all_text(await run(client, "print('still serving')"))


async def test_a_closed_session_cannot_be_continued_and_keeps_its_files(contract_client: Ctx) -> None:
    """One closed-session rule on every backend: the same error, the files still there."""
    client, _ = contract_client
    first = await run(client, "kept = 1\nopen('/mnt/data/left.txt', 'w').write('x')")
    session = session_of(first)
    file_id = generated_ids(first)["left.txt"]
    closed = await client.call_tool("close_session", {"session_id": session})
    assert not closed.is_error, all_text(closed)
    again = await run(client, "print(kept)", session_id=session)
    assert again.is_error and f"Session '{session}' was closed" in all_text(again), all_text(again)
    assert "files stay fetchable" in all_text(again)
    fetched = await client.call_tool("fetch_generated_file", {"file_id": file_id})
    assert not fetched.is_error and "x" in all_text(fetched)
