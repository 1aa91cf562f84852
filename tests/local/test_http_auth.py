"""Streamable HTTP for several agents at once: tokens, ownership, Host/Origin checks, body size, refused binds.

A real uvicorn server on 127.0.0.1 serves the same app `ci-mcp serve --transport http` serves; real MCP clients
call it with and without tokens.
"""

from __future__ import annotations

import base64
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
import uvicorn
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from ci_mcp.cli import http_app
from ci_mcp.errors import ConfigError
from ci_mcp.http import max_body_bytes, plan_http
from ci_mcp.settings import Settings
from tests.conftest import all_text, seed_font_cache, session_of, uploaded_id
from tests.http_helpers import cli_http_server, client_for, free_port

pytestmark = pytest.mark.anyio

ALICE = "alice-token-0123456789abcdef"
BOB = "bob-token-0123456789abcdef"


INITIALIZE = (
    b'{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},'
    b'"clientInfo":{"name":"probe","version":"0"}}}'
)


@asynccontextmanager
async def serving(settings: Settings) -> AsyncIterator[str]:
    app = http_app(settings, plan_http(settings))
    server = uvicorn.Server(uvicorn.Config(app, host=settings.host, port=settings.port, log_level="warning"))
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve)
        with anyio.fail_after(30):
            while not server.started:
                await anyio.sleep(0.02)
        try:
            yield f"http://127.0.0.1:{settings.port}/mcp"
        finally:
            server.should_exit = True


@pytest.fixture
def http_settings(make_settings: Callable[..., Settings]) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {"transport": "http", "host": "127.0.0.1", "port": free_port()}
        values.update(overrides)
        return make_settings(**values)

    return make


JSON_HEADERS = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}


async def status_of(url: str, headers: dict[str, str], body: bytes | None = None) -> int:
    message = body or INITIALIZE
    async with httpx2.AsyncClient() as http:
        response = await http.post(
            url,
            content=message,
            headers={"Content-Type": "application/json", "Accept": "application/json, text/event-stream", **headers},
        )
        return response.status_code


async def test_only_a_configured_token_gets_in(http_settings: Callable[..., Settings]) -> None:
    async with serving(http_settings(http_tokens=[f"alice:{ALICE}"])) as url:
        assert await status_of(url, {}) == 401
        assert await status_of(url, {"Authorization": "Bearer not-the-token-at-all-123"}) == 401
        async with client_for(url, ALICE) as alice:
            done = await alice.call_tool("run_code_analysis", {"code": "print(6 * 7)"})
            assert "42" in all_text(done), all_text(done)


async def test_one_principal_cannot_see_or_continue_anothers_sessions_and_files(
    http_settings: Callable[..., Settings],
) -> None:
    settings = http_settings(http_tokens=[f"alice:{ALICE}", f"bob:{BOB}"])
    async with serving(settings) as url, client_for(url, ALICE) as alice, client_for(url, BOB) as bob:
        up = await alice.call_tool(
            "upload_file", {"content_base64": base64.b64encode(b"a,b\n1,2\n").decode(), "filename": "secret.csv"}
        )
        file_id = uploaded_id(up)
        run = await alice.call_tool(
            "run_code_analysis",
            {"code": "secret = 'alice-only'\nopen('out.txt','w').write('x')", "file_ids": [file_id]},
        )
        session = session_of(run)
        generated = [line for line in all_text(run).split() if line.startswith("file-")]
        assert generated, all_text(run)

        # Bob: every way in answers "not found", and never the data.
        attempts = {
            "continue": await bob.call_tool("run_code_analysis", {"code": "print(secret)", "session_id": session}),
            "attach": await bob.call_tool("run_code_analysis", {"code": "print(1)", "file_ids": [file_id]}),
            "fetch": await bob.call_tool("fetch_generated_file", {"file_id": file_id}),
            "fetch generated": await bob.call_tool("fetch_generated_file", {"file_id": generated[0]}),
            "close": await bob.call_tool("close_session", {"session_id": session}),
            "list session": await bob.call_tool("list_files", {"session_id": session}),
        }
        for what, result in attempts.items():
            assert result.is_error, (what, all_text(result))
            assert "No file with id" in all_text(result) or "No session with id" in all_text(result), (
                what,
                all_text(result),
            )
            assert "alice-only" not in all_text(result) and "a,b" not in all_text(result)
        listed = await bob.call_tool("list_files", {})
        assert file_id not in all_text(listed)
        resources = await bob.list_resources()
        assert all(file_id not in str(r.uri) for r in resources.resources)
        with pytest.raises(Exception, match="No file with id"):
            await bob.read_resource(f"ci-mcp://files/{file_id}")

        # Alice still has everything.
        again = await alice.call_tool("run_code_analysis", {"code": "print(secret)", "session_id": session})
        assert "alice-only" in all_text(again)
        assert file_id in all_text(await alice.call_tool("list_files", {}))
        assert any(file_id in str(r.uri) for r in (await alice.list_resources()).resources)


async def test_sessions_per_principal_are_bounded(http_settings: Callable[..., Settings]) -> None:
    settings = http_settings(http_tokens=[f"alice:{ALICE}", f"bob:{BOB}"], max_sessions_per_principal=1)
    async with serving(settings) as url, client_for(url, ALICE) as alice, client_for(url, BOB) as bob:
        first = await alice.call_tool("run_code_analysis", {"code": "print(1)"})
        refused = await alice.call_tool("run_code_analysis", {"code": "print(2)"})
        assert refused.is_error and "CI_MCP_MAX_SESSIONS_PER_PRINCIPAL" in all_text(refused), all_text(refused)
        assert session_of(first) in all_text(refused)
        assert not (await bob.call_tool("run_code_analysis", {"code": "print(3)"})).is_error
        await alice.call_tool("close_session", {"session_id": session_of(first)})
        assert not (await alice.call_tool("run_code_analysis", {"code": "print(4)"})).is_error


async def test_foreign_host_and_origin_headers_are_refused_on_every_bind(
    http_settings: Callable[..., Settings],
) -> None:
    # 127.0.0.2 is loopback but not a name the SDK protects by default.
    settings = http_settings(host="127.0.0.2")
    async with serving(settings):
        url = f"http://127.0.0.2:{settings.port}/mcp"
        assert await status_of(url, {"Host": "evil.example"}) in (400, 403, 421)
        assert await status_of(url, {"Origin": "http://evil.example"}) in (400, 403)
        assert await status_of(url, {}) == 200


async def test_the_body_limit_admits_the_advertised_inline_upload(http_settings: Callable[..., Settings]) -> None:
    settings = http_settings(max_inline_upload_bytes=6 * 1024 * 1024)  # over the SDK's 4 MiB default
    data = b"x" * (6 * 1024 * 1024)
    async with serving(settings) as url, client_for(url, None) as client:
        up = await client.call_tool(
            "upload_file", {"content_base64": base64.b64encode(data).decode(), "filename": "big.bin"}
        )
        assert not up.is_error, all_text(up)
    over = b'{"jsonrpc":"2.0","id":1,"method":"ping","params":{"pad":"' + b"x" * max_body_bytes(settings) + b'"}}'
    async with serving(http_settings(max_inline_upload_bytes=6 * 1024 * 1024)) as url:
        assert await status_of(url, {}, over) == 413


def test_a_public_bind_without_a_token_refuses_to_start(make_settings: Callable[..., Settings]) -> None:
    with pytest.raises(ConfigError, match="CI_MCP_HTTP_TOKENS"):
        plan_http(make_settings(transport="http", host="0.0.0.0"))
    with pytest.raises(ConfigError, match="shorter than 16"):
        plan_http(make_settings(transport="http", host="0.0.0.0", http_tokens=["short"]))
    plan = plan_http(make_settings(transport="http", host="0.0.0.0", http_tokens=[ALICE]))
    assert "bearer tokens (1 configured)" in plan.auth_mode
    assert ALICE not in repr(plan)


def test_the_cli_says_where_it_serves_and_how_it_authenticates(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "CI_MCP_DATA_DIR": str(seed_font_cache(tmp_path / "data"))}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2] / "src")
    refused = subprocess.run(
        [sys.executable, "-m", "ci_mcp", "serve", "--transport", "http", "--host", "0.0.0.0", "--port", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 2, refused.stderr
    assert "CI_MCP_HTTP_TOKENS" in refused.stderr and "Traceback" not in refused.stderr
    token_file = tmp_path / "tokens"
    token_file.write_text(f"# agents\nalice:{ALICE}\n")
    with cli_http_server(
        tmp_path, {"CI_MCP_HTTP_TOKEN_FILE": str(token_file), "CI_MCP_KERNEL_POOL_SIZE": "0"}
    ) as served:
        first = served.start_line
        assert f"http://127.0.0.1:{served.port}/mcp" in first and "bearer tokens (1 configured)" in first, first
        assert ALICE not in first


# -- OAuth resource-server mode --------------------------------------------------------------------------------


@pytest.fixture
def issuer() -> Any:
    """A JWKS endpoint on 127.0.0.1 and a signer for tokens from that issuer (as Entra ID would issue them)."""
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    import jwt
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    public.update({"kid": "k1", "use": "sig", "alg": "RS256"})
    body = json.dumps({"keys": [public]}).encode()

    class Keys(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the http.server spelling
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Keys)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()

    class Issuer:
        url = "https://login.example/tenant/v2.0"
        jwks = f"http://127.0.0.1:{httpd.server_address[1]}/keys"

        def token(self, **claims: Any) -> str:
            import time

            now = int(time.time())
            values = {"iss": self.url, "aud": "api://ci-mcp", "exp": now + 600, "iat": now, "oid": "user-1"}
            values.update(claims)
            return jwt.encode(values, key, algorithm="RS256", headers={"kid": "k1"})

    yield Issuer()
    httpd.shutdown()
    httpd.server_close()


async def test_oauth_mode_accepts_only_the_issuers_tokens_for_this_audience(
    http_settings: Callable[..., Settings], issuer: Any
) -> None:
    port = free_port()
    settings = http_settings(
        port=port,
        public_url=f"http://127.0.0.1:{port}/mcp",
        oauth_issuer=issuer.url,
        oauth_audience="api://ci-mcp",
        oauth_jwks_url=issuer.jwks,
    )
    async with serving(settings) as url:
        async with httpx2.AsyncClient() as http:
            metadata = (await http.get(f"http://127.0.0.1:{port}/.well-known/oauth-protected-resource/mcp")).json()
        assert metadata["resource"] == url and metadata["authorization_servers"] == [issuer.url]
        assert await status_of(url, {}) == 401
        for bad in (issuer.token(aud="api://other"), issuer.token(exp=1), issuer.token(iss="https://evil.example")):
            assert await status_of(url, {"Authorization": f"Bearer {bad}"}) == 401
        async with client_for(url, issuer.token()) as one, client_for(url, issuer.token(oid="user-2")) as two:
            run = await one.call_tool("run_code_analysis", {"code": "x = 5\nprint(x)"})
            assert "5" in all_text(run)
            other = await two.call_tool("run_code_analysis", {"code": "print(x)", "session_id": session_of(run)})
            assert other.is_error and "No session with id" in all_text(other)


async def test_progress_and_cancellation_work_over_http(http_settings: Callable[..., Settings]) -> None:
    async with serving(http_settings(http_tokens=[f"alice:{ALICE}"])) as url, client_for(url, ALICE) as alice:
        first = await alice.call_tool("run_code_analysis", {"code": "kept = 'still here'"})
        session = session_of(first)
        seen: list[tuple[float, float | None, str | None]] = []
        got_progress = anyio.Event()

        async def on_progress(progress: float, total: float | None, message: str | None) -> None:
            seen.append((progress, total, message))
            got_progress.set()

        async with anyio.create_task_group() as tg:

            async def long_run() -> None:
                await alice.call_tool(
                    "run_code_analysis",
                    {"code": "import time\nfor _ in range(600): time.sleep(0.1)", "session_id": session},
                    progress_callback=on_progress,
                )

            tg.start_soon(long_run)
            with anyio.fail_after(60):
                await got_progress.wait()
            tg.cancel_scope.cancel()
        assert seen and "running" in (seen[0][2] or "")
        # The cancelled run was interrupted, not left running: the session answers at once and kept its state.
        with anyio.fail_after(30):
            after = await alice.call_tool("run_code_analysis", {"code": "print(kept)", "session_id": session})
        assert "still here" in all_text(after), all_text(after)


async def test_a_file_larger_than_one_request_goes_in_chunks_and_nothing_partial_is_visible(
    http_settings: Callable[..., Settings],
) -> None:
    import hashlib

    settings = http_settings(http_tokens=[f"alice:{ALICE}", f"bob:{BOB}"], max_inline_upload_bytes=1024 * 1024)
    data = bytes(range(256)) * (3 * 4096 + 17)  # about 3 MiB: three requests' worth
    parts = [data[i : i + 1024 * 1024] for i in range(0, len(data), 1024 * 1024)]
    b64 = [base64.b64encode(p).decode() for p in parts]
    async with serving(settings) as url, client_for(url, ALICE) as alice, client_for(url, BOB) as bob:
        with pytest.raises(MCPError):  # one request with the whole file is over the body limit
            await alice.call_tool(
                "upload_file", {"content_base64": base64.b64encode(data).decode(), "filename": "big.bin"}
            )

        first = await alice.call_tool("upload_file", {"content_base64": b64[0], "filename": "big.bin", "more": True})
        assert not first.is_error, all_text(first)
        upload_id = all_text(first).split("upload ")[1].split(" ")[0]
        offset = len(parts[0])
        for part, chunk in zip(parts[1:-1], b64[1:-1], strict=True):
            step = await alice.call_tool(
                "upload_file", {"content_base64": chunk, "upload_id": upload_id, "offset": offset, "more": True}
            )
            assert not step.is_error, all_text(step)
            again = await alice.call_tool(  # the same chunk again, as after a lost answer: accepted once
                "upload_file", {"content_base64": chunk, "upload_id": upload_id, "offset": offset, "more": True}
            )
            assert not again.is_error, all_text(again)
            offset += len(part)
        wrong_offset = await alice.call_tool(
            "upload_file", {"content_base64": b64[-1], "upload_id": upload_id, "offset": offset + 5, "more": True}
        )
        assert wrong_offset.is_error and f"offset={offset}" in all_text(wrong_offset)
        stolen = await bob.call_tool(
            "upload_file", {"content_base64": b64[-1], "upload_id": upload_id, "offset": offset, "more": True}
        )
        assert stolen.is_error and "No unfinished upload" in all_text(stolen)
        assert "big.bin" not in all_text(await alice.call_tool("list_files", {}))  # nothing partial is a file

        done = await alice.call_tool(
            "upload_file",
            {
                "content_base64": b64[-1],
                "upload_id": upload_id,
                "offset": offset,
                "sha256": hashlib.sha256(data).hexdigest(),
            },
        )
        assert not done.is_error, all_text(done)
        file_id = uploaded_id(done)
        check = await alice.call_tool(
            "run_code_analysis",
            {
                "code": "import hashlib; print(hashlib.sha256(open('big.bin','rb').read()).hexdigest())",
                "file_ids": [file_id],
            },
        )
        assert hashlib.sha256(data).hexdigest() in all_text(check), all_text(check)

        # A wrong checksum stores nothing and drops the partial upload.
        begun = await alice.call_tool("upload_file", {"content_base64": b64[0], "filename": "bad.bin", "more": True})
        bad_id = all_text(begun).split("upload ")[1].split(" ")[0]
        bad = await alice.call_tool(
            "upload_file",
            {"content_base64": b64[1], "upload_id": bad_id, "offset": len(parts[0]), "sha256": "0" * 64},
        )
        assert bad.is_error and "does not match its sha256" in all_text(bad)
        assert "bad.bin" not in all_text(await alice.call_tool("list_files", {}))
        gone = await alice.call_tool(
            "upload_file", {"content_base64": b64[1], "upload_id": bad_id, "offset": len(parts[0]), "more": True}
        )
        assert gone.is_error and "No unfinished upload" in all_text(gone)


async def test_a_public_bind_with_a_token_still_refuses_foreign_host_and_origin(
    http_settings: Callable[..., Settings],
) -> None:
    settings = http_settings(host="0.0.0.0", http_tokens=[ALICE], http_allowed_hosts=["ci.example"])
    auth = {"Authorization": f"Bearer {ALICE}"}
    async with serving(settings):
        url = f"http://127.0.0.1:{settings.port}/mcp"
        assert await status_of(url, {**auth, "Host": "evil.example"}) in (400, 403, 421)
        assert await status_of(url, {**auth, "Host": "ci.example", "Origin": "http://evil.example"}) in (400, 403)
        assert await status_of(url, {**auth, "Host": "ci.example", "Origin": "https://ci.example"}) == 200
        assert await status_of(url, {"Host": "ci.example"}) == 401


async def test_an_abandoned_chunked_upload_leaves_nothing_behind(http_settings: Callable[..., Settings]) -> None:
    import time

    from ci_mcp.uploads import STALE_SECONDS, ChunkedUploads

    settings = http_settings()
    async with serving(settings) as url, client_for(url, None) as client:
        begun = await client.call_tool(
            "upload_file", {"content_base64": base64.b64encode(b"a" * 1000).decode(), "filename": "x.bin", "more": True}
        )
        upload_id = all_text(begun).split("upload ")[1].split(" ")[0]
        assert (settings.data_dir / "uploads" / upload_id).is_dir()
        # The client goes away. The next server start (or any later sweep) drops uploads left for a day.
        ChunkedUploads(settings.data_dir, settings.max_upload_bytes).drop_stale(now=time.time() + STALE_SECONDS + 1)
        assert not any((settings.data_dir / "uploads").iterdir())
        resumed = await client.call_tool(
            "upload_file", {"content_base64": "YQ==", "upload_id": upload_id, "offset": 1000, "sha256": "0" * 64}
        )
        assert resumed.is_error and "No unfinished upload" in all_text(resumed)
        assert "x.bin" not in all_text(await client.call_tool("list_files", {}))


async def test_sessions_a_client_abandons_are_reaped_and_their_kernels_stopped(
    http_settings: Callable[..., Settings],
) -> None:
    settings = http_settings(http_tokens=[ALICE], http_session_idle_seconds=0.5, idle_session_seconds=0.5)
    headers = {"Authorization": f"Bearer {ALICE}"}
    async with serving(settings) as url:
        # A client that never ends its MCP session (no DELETE on exit), then disappears.
        http = httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(60))
        async with http, Client(streamable_http_client(url, http_client=http, terminate_on_close=False)) as gone:
            session = session_of(await gone.call_tool("run_code_analysis", {"code": "state = 1"}))
        workspace = _workspace_of(settings, session)
        assert _kernel_processes(workspace), "the session's kernel should be running"
        with anyio.fail_after(30):  # the idle reaper stops the kernel, however long the machine takes
            while _kernel_processes(workspace):
                await anyio.sleep(0.1)

        # The MCP HTTP session itself is ended too: its id is refused once idle.
        async with httpx2.AsyncClient(headers=headers) as raw:
            opened = await raw.post(url, content=INITIALIZE, headers=JSON_HEADERS)
            mcp_session = opened.headers["mcp-session-id"]
            with anyio.fail_after(30):
                while True:  # each ping counts as use: leave it idle past the timeout before asking again
                    await anyio.sleep(4 * settings.http_session_idle_seconds)
                    ping = await raw.post(
                        url,
                        content=b'{"jsonrpc":"2.0","id":2,"method":"ping"}',
                        headers={**JSON_HEADERS, "mcp-session-id": mcp_session, "mcp-protocol-version": "2025-06-18"},
                    )
                    if ping.status_code == 404:
                        break

        async with client_for(url, ALICE) as back:
            again = await back.call_tool("run_code_analysis", {"code": "print('fresh')", "session_id": session})
        assert "was not running" in all_text(again), all_text(again)


def _workspace_of(settings: Settings, session_id: str) -> str:
    import json
    import sqlite3

    with sqlite3.connect(settings.data_dir / "meta.sqlite3") as db:
        (state,) = db.execute("SELECT state FROM sessions WHERE session_id = ?", (session_id,)).fetchone()
    return str(json.loads(state)["workspace"])


def _kernel_processes(workspace: str) -> list[int]:
    """Processes of the session's sandbox: whose command line names its workspace (a cold start: bwrap and the
    kernel), or which see it mounted at /mnt/data (a kernel forked by the zygote, and the fork that waits for it)."""
    found = []
    mounted = f" {workspace} /mnt/data ".encode()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (
                    workspace.encode() in (entry / "cmdline").read_bytes()
                    or mounted in (entry / "mountinfo").read_bytes()
                ):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found
