"""Which host paths upload_file reads and fetch_generated_file's save_to writes: the allowed roots, the client's
roots, and the paths refused whatever the roots (secrets, special files, links out)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from mcp import Client
from mcp_types import CallToolResult, ListRootsResult, Root

from ci_mcp.settings import Settings
from tests.conftest import all_text, generated_ids, uploaded_id
from tests.fakes import FakeBackend, Generated, Step
from tests.surface.conftest import connect

pytestmark = pytest.mark.anyio


async def upload_with_client_roots(settings: Settings, uris: list[str], path: Path) -> CallToolResult:
    async def list_roots(context: object) -> ListRootsResult:
        return ListRootsResult(roots=[Root(uri=uri, name="project") for uri in uris])  # type: ignore[arg-type]

    async with connect(settings, list_roots_callback=list_roots) as (client, _):
        return await client.call_tool("upload_file", {"path": str(path)})


async def test_client_roots_narrow_the_allowed_directories_and_never_widen_them(
    settings: Settings, allowed: Path, tmp_path: Path
) -> None:
    (allowed / "sub").mkdir()
    (allowed / "sub" / "mine.csv").write_text("a\n1\n")
    (allowed / "other.csv").write_text("b\n2\n")
    (tmp_path / "outside.csv").write_text("c\n3\n")
    # A client declaring the whole disk reaches only the configured directory.
    refused = await upload_with_client_roots(settings, ["file:///"], tmp_path / "outside.csv")
    assert refused.is_error and "outside the directories" in all_text(refused), all_text(refused)
    ok = await upload_with_client_roots(settings, ["file:///"], allowed / "other.csv")
    assert not ok.is_error, all_text(ok)
    # A narrower client root narrows the set.
    sub = (allowed / "sub").as_uri()
    ok = await upload_with_client_roots(settings, [sub], allowed / "sub" / "mine.csv")
    assert not ok.is_error, all_text(ok)
    refused = await upload_with_client_roots(settings, [sub], allowed / "other.csv")
    assert refused.is_error and str(allowed / "sub") in all_text(refused), all_text(refused)
    # Roots that do not overlap at all: the error names the setting to change.
    refused = await upload_with_client_roots(settings, [tmp_path.parent.as_uri() + "/elsewhere"], allowed / "other.csv")
    assert refused.is_error and "CI_MCP_ALLOWED_DIRS" in all_text(refused), all_text(refused)


async def test_a_client_listing_no_roots_gets_the_configured_ones(
    settings: Settings, allowed: Path, tmp_path: Path
) -> None:
    (allowed / "a.csv").write_text("a\n1\n")
    (tmp_path / "outside.csv").write_text("c\n3\n")
    ok = await upload_with_client_roots(settings, [], allowed / "a.csv")
    assert not ok.is_error, all_text(ok)
    refused = await upload_with_client_roots(settings, [], tmp_path / "outside.csv")
    assert refused.is_error and str(allowed) in all_text(refused), all_text(refused)


@pytest.mark.parametrize("where", ["root", "home"])
async def test_neither_the_disk_root_nor_home_is_an_implicit_root(
    make_settings: Callable[..., Settings], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "notes.csv").write_text("a\n1\n")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir("/" if where == "root" else home)
    async with connect(make_settings(allowed_dirs=[])) as (client, _):
        refused = await client.call_tool("upload_file", {"path": str(home / "notes.csv")})
        assert refused.is_error and "CI_MCP_ALLOWED_DIRS is not set" in all_text(refused), all_text(refused)
        inline = await client.call_tool("upload_file", {"content_base64": "YQoxCg==", "filename": "a.csv"})
        assert not inline.is_error, all_text(inline)
    # A project folder as the working directory is still the implicit root.
    (home / "project").mkdir()
    monkeypatch.chdir(home / "project")
    (home / "project" / "d.csv").write_text("a\n1\n")
    async with connect(make_settings(allowed_dirs=[])) as (client, _):
        ok = await client.call_tool("upload_file", {"path": str(home / "project" / "d.csv")})
        assert not ok.is_error, all_text(ok)


async def test_upload_refuses_a_symlink_that_escapes_the_allowed_roots(client: Client, allowed: Path) -> None:
    (allowed / "innocent.csv").symlink_to("/etc/hostname")
    result = await client.call_tool("upload_file", {"path": str(allowed / "innocent.csv")})
    assert result.is_error and "outside the directories" in all_text(result)


async def test_a_relative_path_is_read_from_the_first_root(client: Client, allowed: Path) -> None:
    (allowed / "rel.csv").write_text("a\n1\n")
    ok = await client.call_tool("upload_file", {"path": "rel.csv"})
    assert not ok.is_error, all_text(ok)


@pytest.mark.parametrize("case", ["fifo", "ssh_key", "dotenv", "pem", "gcloud", "dotdot", "device"])
async def test_the_path_policy_refuses_special_secret_and_escaping_paths(
    client: Client, allowed: Path, tmp_path: Path, case: str
) -> None:
    expected = "holds secrets"
    if case == "fifo":
        target = allowed / "pipe.csv"
        os.mkfifo(target)
        expected = "not a regular file"
    elif case == "ssh_key":
        (allowed / ".ssh").mkdir()
        target = allowed / ".ssh" / "id_rsa"
        target.write_text("-----BEGIN OPENSSH PRIVATE KEY-----")
    elif case == "dotenv":
        target = allowed / ".env"
        target.write_text("API_KEY=x")
    elif case == "pem":
        target = allowed / "server.pem"
        target.write_text("-----BEGIN PRIVATE KEY-----")
    elif case == "gcloud":
        (allowed / ".config" / "gcloud").mkdir(parents=True)
        target = allowed / ".config" / "gcloud" / "credentials.db"
        target.write_text("token")
    elif case == "dotdot":
        (tmp_path / "outside.csv").write_text("a\n1\n")
        target = allowed / ".." / "outside.csv"
        expected = "outside the directories"
    else:
        target = Path("/dev/null")
        expected = "outside the directories"
    result = await client.call_tool("upload_file", {"path": str(target)})
    assert result.is_error and expected in all_text(result), all_text(result)


# -- save_to ---------------------------------------------------------------------------------------------------


async def generated(client: Client, backend: FakeBackend, name: str, data: bytes) -> str:
    backend.script(Step(files=[Generated(name, data)]))
    result = await client.call_tool("run_code_analysis", {"code": "write it"})
    return generated_ids(result)[name]


async def test_save_to_writes_inside_the_roots_and_refuses_outside_or_overwrite(
    client: Client, backend: FakeBackend, allowed: Path, tmp_path: Path
) -> None:
    fid = await generated(client, backend, "r.txt", b"report")
    saved = await client.call_tool("fetch_generated_file", {"file_id": fid, "save_to": str(allowed)})
    assert not saved.is_error and (allowed / "r.txt").read_text() == "report"
    assert str(allowed / "r.txt") in all_text(saved) and "6 bytes" in all_text(saved)
    again = await client.call_tool("fetch_generated_file", {"file_id": fid, "save_to": str(allowed / "r.txt")})
    assert again.is_error and "overwrite=true" in all_text(again)
    (allowed / "r.txt").write_text("old")
    replaced = await client.call_tool(
        "fetch_generated_file", {"file_id": fid, "save_to": str(allowed / "r.txt"), "overwrite": True}
    )
    assert not replaced.is_error and (allowed / "r.txt").read_text() == "report"
    outside = tmp_path / "outside.txt"
    refused = await client.call_tool("fetch_generated_file", {"file_id": fid, "save_to": str(outside)})
    assert refused.is_error and "outside the directories" in all_text(refused)
    assert not outside.exists()
    missing = await client.call_tool("fetch_generated_file", {"file_id": fid, "save_to": str(allowed / "no/r.txt")})
    assert missing.is_error and "does not exist" in all_text(missing)
    secret = await client.call_tool("fetch_generated_file", {"file_id": fid, "save_to": str(allowed / ".env")})
    assert secret.is_error and "holds secrets" in all_text(secret)
    assert sorted(p.name for p in allowed.iterdir()) == ["r.txt"]  # no temporary left behind


async def test_save_to_refuses_a_symlink_target_and_keeps_generated_names_safe(
    client: Client, backend: FakeBackend, allowed: Path
) -> None:
    fid = await generated(client, backend, "a/b/x;$(rm).txt", b"x")
    saved = await client.call_tool("fetch_generated_file", {"file_id": fid, "save_to": str(allowed)})
    assert not saved.is_error, all_text(saved)
    assert [p.name for p in allowed.iterdir()] == ["x_rm_.txt"]  # directories stripped on the host, no shell chars
    (allowed / "link.txt").symlink_to(allowed / "victim.txt")
    linked = await client.call_tool(
        "fetch_generated_file", {"file_id": fid, "save_to": str(allowed / "link.txt"), "overwrite": True}
    )
    assert linked.is_error and "symbolic link" in all_text(linked)
    assert not (allowed / "victim.txt").exists()


async def test_save_to_follows_the_client_roots(settings: Settings, allowed: Path) -> None:
    (allowed / "sub").mkdir()
    (allowed / "other").mkdir()

    async def list_roots(context: object) -> ListRootsResult:
        return ListRootsResult(roots=[Root(uri=(allowed / "sub").as_uri(), name="sub")])  # type: ignore[arg-type]

    async with connect(settings, list_roots_callback=list_roots) as (client, _):
        fid = uploaded_id(await client.call_tool("upload_file", {"content_base64": "YQ==", "filename": "a.txt"}))
        refused = await client.call_tool("fetch_generated_file", {"file_id": fid, "save_to": str(allowed / "other")})
        assert refused.is_error and str(allowed / "sub") in all_text(refused), all_text(refused)
        ok = await client.call_tool("fetch_generated_file", {"file_id": fid, "save_to": str(allowed / "sub")})
        assert not ok.is_error and (allowed / "sub" / "a.txt").read_bytes() == b"a"
