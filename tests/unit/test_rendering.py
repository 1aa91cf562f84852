"""src/ci_mcp/rendering.py: the answers of upload_file, save_to, list_files and close_session, built without a
server (run results and fetched files are rendered over the MCP client in tests/surface)."""

from __future__ import annotations

from pathlib import Path

from mcp_types import CallToolResult, TextContent

from ci_mcp.models import FileInfo
from ci_mcp.rendering import MAX_LISTED_FILES, META_KEY, closed, file_list, saved, uploaded


def info(file_id: str = "file-1", name: str = "a.csv", session_id: str | None = None) -> FileInfo:
    if session_id:
        return FileInfo(file_id, name, 1234, "text/csv", "generated", "0" * 64, 0.0, session_id)
    return FileInfo(file_id, name, 1234, "text/csv", "upload", "0" * 64, 0.0)


def text(result: CallToolResult) -> str:
    return "\n".join(block.text for block in result.content if isinstance(block, TextContent))


def test_an_upload_says_where_the_code_finds_it_and_carries_its_id() -> None:
    mounted = uploaded(info(), "a.csv", "/mnt/data")
    assert 'Uploaded "a.csv" as file-1 (1,234 bytes, text/csv)' in text(mounted)
    assert "find it at /mnt/data/a.csv." in text(mounted) and "was changed" not in text(mounted)
    assert mounted.meta == {META_KEY: {"files": [{"file_id": "file-1", "name": "a.csv", "media_type": "text/csv"}]}}
    assert 'find it as "a.csv" in its working directory.' in text(uploaded(info(), "a.csv", None))


def test_an_upload_stored_under_another_name_says_so() -> None:
    renamed = text(uploaded(info(name="a_b.csv"), "a/b.csv", "/mnt/data"))
    assert 'The name "a/b.csv" was changed to "a_b.csv"' in renamed


def test_a_saved_file_names_the_path_written() -> None:
    assert text(saved(info(), Path("/out/a.csv"))) == 'Saved file-1 ("a.csv", 1,234 bytes) to /out/a.csv.'


def test_a_listing_shows_sessions_only_when_it_is_not_one_sessions() -> None:
    files = [info("file-1"), info("file-2", "out.png", session_id="sess-1")]
    everything = text(file_list(files, None)).splitlines()
    assert len(everything) == 2 and everything[0].startswith("file-1  upload")
    assert everything[1].startswith("file-2  generated") and everything[1].endswith("(session sess-1)")
    assert "(session" not in text(file_list(files[1:], "sess-1"))


def test_a_listing_keeps_the_newest_files_and_says_when_there_are_none() -> None:
    many = [info(f"file-{i}") for i in range(MAX_LISTED_FILES + 5)]
    lines = text(file_list(many, None)).splitlines()
    assert len(lines) == MAX_LISTED_FILES
    assert lines[0].startswith("file-5 ") and lines[-1].startswith(f"file-{len(many) - 1} ")
    assert text(file_list([], None)) == "No files stored yet."
    assert text(file_list([], "sess-1")) == "No files."


def test_a_closed_session_keeps_its_files() -> None:
    assert text(closed("sess-1")) == "Session sess-1 closed; its files are kept."
