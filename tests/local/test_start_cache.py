"""The fast start (issue 12): `ci-mcp` over a real pipe answers `initialize`, `tools/list` and `ping` from a start
cache the real server recorded, before the MCP SDK is imported; everything else waits for the server, which then
gets the client's bytes from the start. And the thread-free stdio transport reads what the SDK's reads."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import queue
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from io import TextIOWrapper
from pathlib import Path
from typing import IO, Any
from unittest import mock

import anyio
import pytest
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.server.stdio import stdio_server
from mcp.shared.message import SessionMessage
from mcp_types import (
    CLIENT_CAPABILITIES_META_KEY,
    CLIENT_INFO_META_KEY,
    PROTOCOL_VERSION_META_KEY,
    JSONRPCNotification,
    JSONRPCResponse,
)
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS, LATEST_HANDSHAKE_VERSION, MODERN_PROTOCOL_VERSIONS

from ci_mcp import cli, faststart
from ci_mcp.settings import Settings
from ci_mcp.stdio import serve_stdio, stdio_streams
from tests.conftest import REPO, seed_font_cache

CACHED = "from the start cache"
WAIT = 120  # seconds: a bound on every read from the server, never a pause


def initialize(version: str, rid: int = 1) -> dict[str, Any]:
    client = {"name": "test-client", "version": "1.0"}
    params = {"protocolVersion": version, "capabilities": {"roots": {}}, "clientInfo": client}
    return {"jsonrpc": "2.0", "id": rid, "method": "initialize", "params": params}


INITIALIZED = {"jsonrpc": "2.0", "method": "notifications/initialized"}


def request(rid: int, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
    message: dict[str, Any] = {"jsonrpc": "2.0", "id": rid, "method": method}
    if params is not None:
        message["params"] = params
    return message


class _Lines:
    """A client's view of a server's output: one JSON-RPC message per line, read by a pump thread."""

    def __init__(self, output: IO[bytes]) -> None:
        self._lines: queue.Queue[bytes] = queue.Queue()
        self.seen: list[dict[str, Any]] = []
        self.pump = threading.Thread(target=self._pump, args=(output,), daemon=True)
        self.pump.start()

    def _pump(self, output: IO[bytes]) -> None:
        for line in output:
            self._lines.put(line)
        self._lines.put(b"")

    def receive(self) -> dict[str, Any]:
        line = self._lines.get(timeout=WAIT)
        assert line, f"the server closed its output; stderr:\n{self.stderr()}"
        message: dict[str, Any] = json.loads(line)
        self.seen.append(message)
        return message

    def answer(self, rid: int) -> dict[str, Any]:
        """The response to request `rid` (notifications and other responses on the way are skipped)."""
        while True:
            message = self.receive()
            if message.get("id") == rid and "method" not in message:
                return message

    def responses(self) -> list[int]:
        """The id of every response the client got, once the server has ended (a duplicate shows twice)."""
        while line := self._lines.get(timeout=WAIT):
            self.seen.append(json.loads(line))
        return [m["id"] for m in self.seen if "method" not in m]

    def stderr(self) -> str:
        return ""


def encoded(messages: tuple[dict[str, Any] | bytes, ...]) -> bytes:
    return b"".join(m if isinstance(m, bytes) else json.dumps(m).encode() + b"\n" for m in messages)


class Server(_Lines):
    """`ci-mcp` as a client launches it, driven line by line over its stdin and stdout pipes."""

    def __init__(self, process: subprocess.Popen[bytes], errors: Path) -> None:
        assert process.stdout is not None
        self.process, self.errors = process, errors
        super().__init__(process.stdout)

    def send(self, *messages: dict[str, Any] | bytes) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(encoded(messages))
        self.process.stdin.flush()

    def close(self) -> int:
        assert self.process.stdin is not None
        self.process.stdin.close()
        return self.process.wait(timeout=WAIT)

    def stderr(self) -> str:
        return self.errors.read_text(errors="replace")


class InProcess(_Lines):
    """`python -m ci_mcp`'s stdio start, in this process on a pipe pair: the start cache's responder answers on the
    wire while no server is up, then `hand_over` builds the server and `serve_stdio` takes the wire over with what
    the responder read and answered, as `cli._serve` does. For the checks made at every protocol version, each of
    which would otherwise pay for two server processes (the SDK's import alone is about a CPU-second); the spawned
    tests cover the process itself, with both eras (the SDK client's `auto` and `legacy` modes)."""

    def __init__(self, settings: Settings, cache: faststart.CacheFile) -> None:
        to_server, self._to_server = os.pipe()
        from_server, out = os.pipe()
        self.settings, self.cache = settings, cache
        self.wire = faststart.Wire(to_server, out)
        answers = cache.load()
        self.responder = faststart.Responder(self.wire, answers).start() if answers is not None else None
        self.handed: faststart.HandOver | None = None
        self.serving: threading.Thread | None = None
        self._output = open(from_server, "rb")  # noqa: SIM115 - the pump reads it to the end; `close` closes it
        super().__init__(self._output)

    def send(self, *messages: dict[str, Any] | bytes) -> None:
        data = memoryview(encoded(messages))
        while data:
            data = data[os.write(self._to_server, data) :]

    def hand_over(self) -> None:
        """Once the responder has read all that was sent (and so answered what it answers), the server comes up."""
        if self.responder is not None:
            deadline = time.monotonic() + WAIT
            while unread(self.wire.read_fd) and time.monotonic() < deadline:
                time.sleep(0.001)  # polls the pipe's fill level: no pause decides the outcome
            self.handed = self.responder.stop()
            self.responder = None
        server = cli._build_server(self.settings)
        self.serving = threading.Thread(
            target=anyio.run, args=(serve_stdio, server, self.wire, self.handed, self.cache)
        )
        self.serving.start()

    def close(self) -> None:
        if self.serving is None:
            self.hand_over()
        assert self.serving is not None
        os.close(self._to_server)  # the end of input ends the server
        self.serving.join(timeout=WAIT)
        assert not self.serving.is_alive(), "the in-process server did not end at the end of its input"
        for fd in (self.wire.read_fd, self.wire.write_fd):
            with contextlib.suppress(OSError):
                os.close(fd)
        self.pump.join(timeout=WAIT)
        self._output.close()


def unread(fd: int) -> int:
    """How many bytes wait in the pipe behind `fd`."""
    return int(struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0])


def env_for(tmp_path: Path, **settings: str) -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", ""),
        "PYTHONPATH": str(REPO / "src"),
        "HOME": str(tmp_path),
        "CI_MCP_DATA_DIR": str(seed_font_cache(tmp_path / "data")),
        "CI_MCP_KERNEL_POOL_SIZE": "0",
        "CI_MCP_KERNEL_ZYGOTE": "false",  # no code runs here: no zygote to start (and preload) with every server
        "CI_MCP_LOG_LEVEL": "DEBUG",  # the fast path says on stderr what it answered
        **settings,
    }


@contextmanager
def serving(tmp_path: Path, env: dict[str, str]) -> Iterator[Server]:
    errors = tmp_path / f"stderr-{len(list(tmp_path.glob('stderr-*')))}.txt"
    with open(errors, "wb") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", "ci_mcp"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, env=env
        )
    server = Server(process, errors)
    try:
        yield server
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=WAIT)
        server.pump.join(timeout=WAIT)  # it has read to the end of the output: the pipes can be closed
        for pipe in (process.stdin, process.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):  # stdin: a flush into a dead server's pipe
                    pipe.close()


def envelope(version: str) -> dict[str, Any]:
    """The parameters of a 2026-07-28 request: only the per-request envelope."""
    meta = {
        PROTOCOL_VERSION_META_KEY: version,
        CLIENT_INFO_META_KEY: {"name": "test-client", "version": "1.0"},
        CLIENT_CAPABILITIES_META_KEY: {"roots": {}},
    }
    return {"_meta": meta}


def first_answers(
    tmp_path: Path, env: dict[str, str], version: str, era: str = "legacy"
) -> tuple[dict[str, Any], dict[str, Any], str]:
    """The opening answer (initialize, or server/discover in the modern era) at `version` and tools/list, as the
    client gets them; and the server's stderr. The server is left to end on its own (the end of input), so that the
    start cache it records is written."""
    with serving(tmp_path, env) as server:
        if era == "legacy":
            server.send(initialize(version))
            opening = server.answer(1)
            server.send(INITIALIZED, request(2, "tools/list"))
        else:
            server.send(request(1, "server/discover", envelope(version)))
            opening = server.answer(1)
            server.send(request(2, "tools/list", envelope(version)))
        tools = server.answer(2)
        assert server.close() == 0, server.stderr()
        return opening, tools, server.stderr()


def cache_file(tmp_path: Path) -> Path:
    return tmp_path / "data" / faststart.CACHE_NAME


VERSIONS = [
    *[("legacy", v) for v in HANDSHAKE_PROTOCOL_VERSIONS],
    ("legacy", "2099-01-01"),  # unsupported: the latest is negotiated
    *[("modern", v) for v in MODERN_PROTOCOL_VERSIONS],
    ("modern", "2099-01-01"),  # unsupported: the server's own error, not the cache's
]


def opening_messages(version: str, era: str) -> list[dict[str, Any]]:
    """A client's first messages at `version`: the opening request (1) and tools/list (2)."""
    if era == "legacy":
        return [initialize(version), INITIALIZED, request(2, "tools/list")]
    return [request(1, "server/discover", envelope(version)), request(2, "tools/list", envelope(version))]


def in_process_answers(
    settings: Settings, cache: faststart.CacheFile, version: str, era: str
) -> tuple[dict[str, Any], dict[str, Any], faststart.HandOver | None]:
    """The opening answer and tools/list from an in-process start (all sent at once, before the hand-over), and
    what the responder handed over (None without a cache)."""
    server = InProcess(settings, cache)
    server.send(*opening_messages(version, era))
    server.hand_over()
    opening, tools = server.answer(1), server.answer(2)
    server.close()
    assert sorted(server.responses()) == [1, 2]  # none twice: the server drops its own answers to those handed over
    return opening, tools, server.handed


def recorded(env: dict[str, str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """What a server on `env` answers first (initialize at the latest handshake version, and tools/list), with the
    start cache it records, as `python -m ci_mcp` on `env` gives and writes them at its first start; in this process
    (see InProcess), so that a spawned test starts warm without first paying for a cold server process. A spawned
    server whose own answers differ from these says so on its stderr ("differed"), which the tests look for."""
    with mock.patch.dict(os.environ, env, clear=True):
        args = cli._parser().parse_args([])
        settings = cli.load_settings(args)
        key = faststart.cache_key(cli.settings_inputs(args))
        cache = faststart.CacheFile(settings.data_dir / faststart.CACHE_NAME, key)
        opening, tools, _ = in_process_answers(settings, cache, LATEST_HANDSHAKE_VERSION, "legacy")
    assert cache.load() is not None
    return opening, tools


@pytest.mark.parametrize(("era", "version"), VERSIONS)
def test_the_cached_first_answers_are_the_servers_own_at_every_protocol_version(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, era: str, version: str
) -> None:
    settings = Settings(data_dir=seed_font_cache(tmp_path / "data"), kernel_pool_size=0, kernel_zygote=False)
    cache = faststart.CacheFile(cache_file(tmp_path), "this test's settings")
    real_opening, real_tools, cold = in_process_answers(settings, cache, version, era)
    assert cold is None  # no cache yet: the server answered, and recorded one
    assert cache.load() is not None
    fast_opening, fast_tools, warm = in_process_answers(settings, cache, version, era)
    assert fast_opening == real_opening
    assert fast_tools == real_tools
    assert "differed" not in caplog.text  # the server's own answers (dropped at the hand-over, recorded) were the same
    assert warm is not None
    if version == "2099-01-01" and era == "modern":
        assert not warm.answered and "error" in fast_opening, (warm.answered, fast_opening)
        return
    assert set(warm.answered) == {1, 2}, warm.answered
    if era == "legacy":
        expected = version if version in HANDSHAKE_PROTOCOL_VERSIONS else LATEST_HANDSHAKE_VERSION
        assert fast_opening["result"]["protocolVersion"] == expected
    else:
        assert version in fast_opening["result"]["supportedVersions"]


@pytest.mark.parametrize("mode", ["auto", "legacy"])
@pytest.mark.anyio
async def test_the_sdk_client_is_answered_from_the_cache_and_then_by_the_server(tmp_path: Path, mode: str) -> None:
    """The SDK's own client over a real pipe: `auto` opens with server/discover (the 2026-07-28 era), `legacy`
    with initialize."""
    env = env_for(tmp_path)
    recorded(env)
    params = StdioServerParameters(command=sys.executable, args=["-m", "ci_mcp"], env=env)
    errors = tmp_path / "client-stderr.txt"
    with open(errors, "w") as errlog, anyio.fail_after(WAIT):
        async with Client(stdio_client(params, errlog=errlog), mode=mode) as client:
            names = {tool.name for tool in (await client.list_tools()).tools}
            result = await client.call_tool("list_files", {})
    assert {"upload_file", "run_code_analysis", "fetch_generated_file"} <= names
    assert result.content[0].text == "No files stored yet.", result  # type: ignore[union-attr]
    stderr = errors.read_text()
    assert f"answered 1 {CACHED}" in stderr and "differ" not in stderr, stderr


def test_a_changed_setting_is_not_answered_from_the_old_cache(tmp_path: Path) -> None:
    recorded(env_for(tmp_path))
    assert cache_file(tmp_path).exists()
    changed = env_for(tmp_path, CI_MCP_MAX_INLINE_UPLOAD_BYTES=str(3 * 1024 * 1024))
    _, tools, stderr = first_answers(tmp_path, changed, LATEST_HANDSHAKE_VERSION)
    assert CACHED not in stderr
    upload = next(t for t in tools["result"]["tools"] if t["name"] == "upload_file")
    assert "at most 3 MB" in upload["description"]
    _, again, stderr = first_answers(tmp_path, changed, LATEST_HANDSHAKE_VERSION)  # now cached for this setting
    assert f"answered 2 {CACHED}" in stderr and again == tools


def test_the_cache_key_changes_with_settings_versions_and_sources(monkeypatch: pytest.MonkeyPatch) -> None:
    args = cli._parser().parse_args([])
    monkeypatch.setenv("CI_MCP_MAX_SESSIONS", "3")
    base = faststart.cache_key(cli.settings_inputs(args))
    assert faststart.cache_key(cli.settings_inputs(args)) == base
    monkeypatch.setenv("ci_mcp_max_sessions", "4")  # names are case-insensitive, as Settings.from_env reads them
    assert faststart.cache_key(cli.settings_inputs(args)) != base
    monkeypatch.delenv("ci_mcp_max_sessions")
    assert faststart.cache_key(cli.settings_inputs(cli._parser().parse_args(["--sandbox", "none"]))) != base
    monkeypatch.setattr(faststart, "__version__", "99.0")
    assert faststart.cache_key(cli.settings_inputs(args)) != base
    monkeypatch.undo()
    monkeypatch.setenv("CI_MCP_MAX_SESSIONS", "3")
    found = faststart._distributions(faststart.SHAPING_DISTRIBUTIONS)
    assert set(found) == set(faststart.SHAPING_DISTRIBUTIONS), found
    monkeypatch.setattr(faststart, "_distributions", lambda names: found | {"mcp": "mcp-9.9.9.dist-info"})
    assert faststart.cache_key(cli.settings_inputs(args)) != base
    monkeypatch.undo()
    monkeypatch.setenv("CI_MCP_MAX_SESSIONS", "3")
    monkeypatch.setattr(faststart, "_source_stamp", lambda: [("server.py", 1, 2)])
    assert faststart.cache_key(cli.settings_inputs(args)) != base


def test_secrets_reach_the_cache_key_only_as_set_or_not(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI_MCP_LLM_API_KEY", "sk-very-secret")
    inputs = cli.settings_inputs(cli._parser().parse_args([]))
    assert "sk-very-secret" not in json.dumps(inputs)
    assert inputs["env"]["CI_MCP_LLM_API_KEY"] is True


def test_every_environment_name_settings_read_is_in_the_cache_key() -> None:
    for name, field in Settings.model_fields.items():
        alias = field.validation_alias
        names = [str(c) for c in getattr(alias, "choices", [])] or [f"CI_MCP_{name.upper()}"]
        for env_name in names:
            assert env_name.startswith("CI_MCP_") or env_name in cli.SETTINGS_ALIASES, env_name


def test_a_tool_call_sent_right_after_initialize_waits_for_the_server_and_is_answered(tmp_path: Path) -> None:
    env = env_for(tmp_path)
    recorded(env)
    with serving(tmp_path, env) as server:
        call = request(2, "tools/call", {"name": "list_files", "arguments": {}})
        server.send(
            initialize(LATEST_HANDSHAKE_VERSION), INITIALIZED, call, request(3, "tools/list"), request(4, "ping")
        )
        answers = {rid: server.answer(rid) for rid in (1, 3, 4, 2)}
        assert answers[2]["result"]["content"][0]["text"] == "No files stored yet.", answers[2]
        assert answers[4]["result"] == {}
        server.send(request(5, "tools/call", {"name": "close_session", "arguments": {"session_id": "nope"}}))
        assert server.answer(5)["result"]["isError"] is True
        assert server.close() == 0
        assert sorted(server.responses()) == [1, 2, 3, 4, 5]  # none twice: the server's own were dropped
        stderr = server.stderr()
    for rid in (1, 3, 4):
        assert f"answered {rid} {CACHED}" in stderr, stderr
    assert f"answered 2 {CACHED}" not in stderr
    assert "differ" not in stderr


def test_bad_json_and_the_end_of_input_over_the_fast_start(tmp_path: Path) -> None:
    env = env_for(tmp_path)
    recorded(env)
    with serving(tmp_path, env) as server:
        server.send(initialize(LATEST_HANDSHAKE_VERSION), b"{not json\n", INITIALIZED, request(2, "tools/list"))
        assert server.answer(1)["result"]["protocolVersion"] == LATEST_HANDSHAKE_VERSION
        assert "tools" in server.answer(2)["result"]
        server.send(b'{"jsonrpc": "2.0", "id": 3, "method": "ping"}')  # the last line, without its newline
        assert server.close() == 0  # the end of input ends the server, which still answers that last line
        assert server.answer(3)["result"] == {}


def test_a_request_before_initialize_is_left_to_the_server(tmp_path: Path) -> None:
    env = env_for(tmp_path)
    recorded(env)
    with serving(tmp_path, env) as server:
        server.send(request(1, "tools/list"), initialize(LATEST_HANDSHAKE_VERSION, rid=2))
        early = server.answer(1)
        assert "error" in early, early  # what the SDK answers before the handshake
        assert server.answer(2)["result"]["protocolVersion"] == LATEST_HANDSHAKE_VERSION
        assert server.close() == 0
        assert CACHED not in server.stderr()


def test_a_ping_first_opens_the_handshake_era_as_with_the_sdk(tmp_path: Path) -> None:
    env = env_for(tmp_path)
    recorded(env)
    with serving(tmp_path, env) as server:
        server.send(request(1, "ping"), request(2, "server/discover", envelope(MODERN_PROTOCOL_VERSIONS[-1])))
        assert server.answer(1)["result"] == {}
        refused = server.answer(2)
        assert "error" in refused, refused  # the SDK refuses the envelope on a connection opened without it
        server.send(initialize(LATEST_HANDSHAKE_VERSION, rid=3))
        assert server.answer(3)["result"]["protocolVersion"] == LATEST_HANDSHAKE_VERSION
        assert server.close() == 0
        stderr = server.stderr()
    assert f"answered 1 {CACHED}" in stderr and f"answered 2 {CACHED}" not in stderr, stderr


CORRUPT = [
    b"",
    b"\x00\xff garbage",
    b'{"format": 1, "key": "',
    b"[]",
    b'{"format": 1, "key": "other", "answers": {}}',
]


@pytest.mark.parametrize("content", CORRUPT)
def test_a_damaged_or_foreign_cache_file_is_ignored(tmp_path: Path, content: bytes) -> None:
    cache = faststart.CacheFile(tmp_path / faststart.CACHE_NAME, "key")
    cache.path.write_bytes(content)
    assert cache.load() is None


def good_answers() -> dict[str, Any]:
    init = {"protocolVersion": "2025-11-25", "capabilities": {}, "serverInfo": {"name": "x", "version": "1"}}
    return {
        "initialize": {"2025-11-25": init},
        "fallback": "2025-11-25",
        "tools/list": {"2025-11-25": {"tools": []}},
        "ping": {},
        "modern": {"2026-07-28": {"server/discover": {}, "tools/list": {"tools": []}}},
        "envelope": {"version": "v", "info": "i", "capabilities": "c"},
    }


@pytest.mark.parametrize(
    "damage",
    [
        lambda a: a.pop("fallback"),
        lambda a: a.update(fallback="2024-11-05"),
        lambda a: a["initialize"]["2025-11-25"].update(protocolVersion="2024-11-05"),
        lambda a: a["tools/list"].clear(),
        lambda a: a.update(ping=None),
        lambda a: a.update(initialize={}),
        lambda a: a.pop("modern"),
        lambda a: a["envelope"].pop("info"),
        lambda a: a["modern"]["2026-07-28"].update(ping=None),
    ],
)
def test_a_cache_file_of_the_right_key_but_the_wrong_shape_is_ignored(tmp_path: Path, damage: Any) -> None:
    cache = faststart.CacheFile(tmp_path / faststart.CACHE_NAME, "key")
    cache.write(good_answers())
    assert cache.load() == good_answers()
    answers = good_answers()
    damage(answers)
    cache.write(answers)
    assert cache.load() is None
    cache.path.write_bytes(b" " * (faststart.MAX_CACHE_BYTES + 1))
    assert cache.load() is None
    cache.path.unlink()
    cache.path.mkdir()
    assert cache.load() is None


def test_a_corrupt_cache_costs_only_the_fast_start_and_is_rewritten(tmp_path: Path) -> None:
    env = env_for(tmp_path)
    real_init, real_tools = recorded(env)
    good = cache_file(tmp_path).read_bytes()
    cache_file(tmp_path).write_bytes(good[: len(good) // 2])
    init, tools, stderr = first_answers(tmp_path, env, LATEST_HANDSHAKE_VERSION)
    assert CACHED not in stderr and (init, tools) == (real_init, real_tools)
    assert json.loads(cache_file(tmp_path).read_bytes()) == json.loads(good)


def test_a_cache_that_disagrees_with_the_server_is_served_once_then_rewritten(tmp_path: Path) -> None:
    """The cache is trusted for the first answers: what its key does not cover (the machine's sandbox or the
    kernel's libraries changing under the same settings) is caught at the hand-over, warned about and rewritten."""
    env = env_for(tmp_path)
    _, real_tools = recorded(env)
    content = json.loads(cache_file(tmp_path).read_bytes())
    content["answers"]["tools/list"][LATEST_HANDSHAKE_VERSION]["tools"][0]["description"] = "STALE"
    cache_file(tmp_path).write_text(json.dumps(content))
    _, stale, stderr = first_answers(tmp_path, env, LATEST_HANDSHAKE_VERSION)
    assert stale["result"]["tools"][0]["description"] == "STALE"
    assert "start cache differed" in stderr, stderr
    _, fresh, stderr = first_answers(tmp_path, env, LATEST_HANDSHAKE_VERSION)
    assert f"answered 2 {CACHED}" in stderr and fresh == real_tools


def test_the_fast_path_imports_neither_the_sdk_nor_pydantic_nor_anyio() -> None:
    code = (
        "import sys; from ci_mcp import cli, faststart; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'mcp', 'mcp_types', 'pydantic', 'anyio'}))"
    )
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(REPO / "src")}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=WAIT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


# The transport itself, against the SDK's, over real pipes: the same input gives the same items in, and the same
# message gives the same bytes out.

WIRE_INPUTS = [
    b'{"jsonrpc": "2.0", "id": 1, "method": "ping"}\n',
    b'{"jsonrpc": "2.0", "id": 2, "method": "ping"}\r\n{"jsonrpc": "2.0", "method": "notifications/initialized"}\r',
    b"\n\n",  # with the "\r" before it: one newline, then a blank line
    b"{not json}\n",
    b'{"jsonrpc": "2.0", "id": 10, "method": "ping"}\r{"jsonrpc": "2.0", "id": 11, "method": "ping"}\n',  # "\r" alone
    b'{"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "caf\xc3\xa9 \xff"}}\n',
    b'{"jsonrpc": "1.0", "id": 4}\n',
    b'{"jsonrpc": "2.0", "id": 5, "method": "x", "params": {"pad": "' + b"y" * 200_000 + b'"}}\n',
    b'{"jsonrpc": "2.0", "id": 6, "method": "last line without newline"}',
]


def summary(item: SessionMessage | Exception) -> object:
    if isinstance(item, Exception):
        return type(item).__name__, str(item)
    return item.message.model_dump(by_alias=True, exclude_unset=True)


async def read_all(use_sdk: bool, data: bytes) -> list[object]:
    read_fd, feed_fd = os.pipe()
    out_r, out_w = os.pipe()

    def feed() -> None:
        with open(feed_fd, "wb") as fh:
            for i in range(0, len(data), 7001):  # in pieces that split lines, "\r\n" and UTF-8 sequences
                fh.write(data[i : i + 7001])
                fh.flush()

    feeder = threading.Thread(target=feed)
    feeder.start()
    items: list[object] = []
    try:
        with anyio.fail_after(WAIT):
            if use_sdk:
                text_in = TextIOWrapper(open(read_fd, "rb"), encoding="utf-8", errors="replace")  # noqa: SIM115
                text_out = TextIOWrapper(open(out_w, "wb"), encoding="utf-8")  # noqa: SIM115
                async with stdio_server(anyio.wrap_file(text_in), anyio.wrap_file(text_out)) as (reader, writer):
                    async with reader:
                        items = [summary(item) async for item in reader]
                    await writer.aclose()
                text_in.close()
                text_out.close()
            else:
                async with stdio_streams(read_fd, out_w) as (reader, writer):
                    async with reader:
                        items = [summary(item) async for item in reader]
                    await writer.aclose()
                os.close(read_fd)
                os.close(out_w)
    finally:
        feeder.join()
        os.close(out_r)
    return items


@pytest.mark.anyio
async def test_the_thread_free_transport_reads_what_the_sdk_transport_reads() -> None:
    data = b"".join(WIRE_INPUTS)
    ours, sdks = await read_all(False, data), await read_all(True, data)
    assert ours == sdks
    kinds = [type(item).__name__ for item in ours]
    assert kinds.count("tuple") == 3 and len(ours) == 11, kinds  # blank line, bad JSON, bad JSON-RPC: errors


@pytest.mark.anyio
async def test_the_thread_free_transport_writes_what_the_sdk_transport_writes() -> None:
    messages = [
        SessionMessage(JSONRPCResponse(jsonrpc="2.0", id=7, result={"text": "café \u2603", "n": 1.5})),
        SessionMessage(JSONRPCNotification(jsonrpc="2.0", method="notifications/progress", params={"p": 1})),
    ]

    async def written(use_sdk: bool) -> bytes:
        in_r, in_w = os.pipe()
        out_r, out_w = os.pipe()
        with anyio.fail_after(WAIT):
            if use_sdk:
                text_in = TextIOWrapper(open(in_r, "rb"), encoding="utf-8", errors="replace")  # noqa: SIM115
                text_out = TextIOWrapper(open(out_w, "wb"), encoding="utf-8")  # noqa: SIM115
                async with stdio_server(anyio.wrap_file(text_in), anyio.wrap_file(text_out)) as (reader, writer):
                    await reader.aclose()
                    for message in messages:
                        await writer.send(message)
                    await writer.aclose()
                    os.close(in_w)
                text_in.close()
                text_out.close()
            else:
                async with stdio_streams(in_r, out_w) as (reader, writer):
                    await reader.aclose()
                    for message in messages:
                        await writer.send(message)
                    await writer.aclose()
                    os.close(in_w)
                os.close(in_r)
                os.close(out_w)
        with open(out_r, "rb") as fh:
            return fh.read()

    ours = await written(False)
    assert ours == await written(True)
    assert ours.count(b"\n") == 2 and "café".encode() in ours
