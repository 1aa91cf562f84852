"""MCP over stdio without worker threads: stdin and stdout as non-blocking descriptors on the event loop.

The SDK's `stdio_server` reads and writes through `anyio.wrap_file`, two worker-thread hops per message (issue 12).
`stdio_streams` yields the same pair of streams (context-carrying memory streams of `SessionMessage | Exception`
in, `SessionMessage` out) with the same framing: UTF-8 decoded with replacement, universal newlines, one JSON-RPC
message per line, a line that does not validate passed on as the exception (the SDK's dispatcher logs it and goes
on), a last line without its newline read at end of input, and end of input closing the read stream. Each message
goes out as one line of `model_dump_json(by_alias=True, exclude_unset=True)`.

Descriptors the event loop cannot watch (a regular file as stdin, say) and terminals are read and written in a
worker thread, as the SDK does. `serve_stdio` runs the built server on them, after `faststart.py`'s hand-over when
that answered the first messages: the bytes it read are replayed first and the responses it already sent are not
sent again.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import anyio
import anyio.lowlevel
import mcp_types as types
from mcp.shared._context_streams import ContextReceiveStream, ContextSendStream, create_context_streams
from mcp.shared.message import SessionMessage

from ci_mcp import faststart
from ci_mcp.faststart import LineSplitter

log = logging.getLogger(__name__)

READ_SIZE = 65536


class _Descriptor:
    """One end of the wire: waits on the event loop where it can, else hops to a worker thread (as the SDK does)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        # A terminal's non-blocking flag is shared with the shell that started us, and would outlive a killed
        # server: a terminal is read in a worker thread instead (a person typing needs no speed).
        self.pollable = not os.isatty(fd)
        if self.pollable:
            os.set_blocking(fd, False)

    def _fall_back(self) -> None:
        self.pollable = False
        os.set_blocking(self.fd, True)

    async def confirm_end(self) -> bytes:
        """The end of input read once more, in a worker thread as the SDK reads every line: the requests read just
        before it get as long to finish as with the SDK's transport before the end of input cancels them."""
        try:
            return await anyio.to_thread.run_sync(os.read, self.fd, READ_SIZE)
        except BlockingIOError:  # not the end after all (a terminal's end-of-file): read on
            return await self.read()

    async def read(self) -> bytes:
        while self.pollable:
            try:
                return os.read(self.fd, READ_SIZE)
            except BlockingIOError:
                try:
                    await anyio.wait_readable(self.fd)
                except OSError:  # not pollable (a regular file, some devices)
                    self._fall_back()
        return await anyio.to_thread.run_sync(os.read, self.fd, READ_SIZE)

    async def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            if not self.pollable:
                written = await anyio.to_thread.run_sync(os.write, self.fd, view)
            else:
                try:
                    written = os.write(self.fd, view)
                except BlockingIOError:
                    try:
                        await anyio.wait_writable(self.fd)
                    except OSError:
                        self._fall_back()
                    continue
            view = view[written:]


def parse_line(line: str) -> SessionMessage | Exception:
    """What the SDK's stdio transport makes of one line."""
    try:
        return SessionMessage(types.jsonrpc_message_adapter.validate_json(line, by_name=False))
    except Exception as exc:
        return exc


def wire_json(message: SessionMessage) -> str:
    """One message as the SDK's stdio transport writes it (without the newline)."""
    return message.message.model_dump_json(by_alias=True, exclude_unset=True)


Swallow = Callable[[SessionMessage], bool]


@asynccontextmanager
async def stdio_streams(
    read_fd: int, write_fd: int, *, preread: bytes = b"", preread_eof: bool = False, swallow: Swallow | None = None
) -> AsyncIterator[tuple[ContextReceiveStream[SessionMessage | Exception], ContextSendStream[SessionMessage]]]:
    """The SDK's stdio stream pair over two descriptors (made non-blocking; their flags are restored on exit).

    `preread` is input already read from `read_fd` (by the fast path), handled first; `preread_eof` that the input
    ended there. `swallow(message)` true drops an outgoing message (a response the fast path already sent)."""
    inbound = _Descriptor(read_fd) if not preread_eof else None
    outbound = _Descriptor(write_fd)
    read_stream_writer, read_stream = create_context_streams[SessionMessage | Exception](0)
    write_stream, write_stream_reader = create_context_streams[SessionMessage](0)

    async def stdin_reader() -> None:
        splitter = LineSplitter()
        try:
            async with read_stream_writer:
                chunk, final = preread, preread_eof
                while True:
                    for line in splitter.feed(chunk, final):
                        await read_stream_writer.send(parse_line(line))
                    if final or inbound is None:
                        if inbound is None:  # the fast path saw the end: the same grace as below
                            await anyio.to_thread.run_sync(_nothing)
                        return
                    chunk = await inbound.read() or await inbound.confirm_end()
                    final = not chunk
        except anyio.ClosedResourceError:
            await anyio.lowlevel.checkpoint()

    async def stdout_writer() -> None:
        try:
            async with write_stream_reader:
                async for message in write_stream_reader:
                    if swallow is not None and swallow(message):
                        continue
                    await outbound.write((wire_json(message) + "\n").encode("utf-8"))
        except anyio.ClosedResourceError:
            await anyio.lowlevel.checkpoint()

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(stdin_reader)
            tg.start_soon(stdout_writer)
            yield read_stream, write_stream
    finally:
        for end in (inbound, outbound):
            if end is not None and end.pollable:
                os.set_blocking(end.fd, True)


def _nothing() -> None:
    return None


class _Swallower:
    """Drops the server's own responses to requests the fast path answered, once each, and notes any that differ
    from what the client was sent."""

    def __init__(self, answered: dict[str | int, Any]) -> None:
        self._answered = dict(answered)

    def __call__(self, message: SessionMessage) -> bool:
        if not self._answered:
            return False
        inner = message.message
        if not isinstance(inner, types.JSONRPCResponse | types.JSONRPCError) or inner.id not in self._answered:
            return False
        sent = self._answered.pop(inner.id)
        real = json.loads(wire_json(message))
        if real != sent:
            log.warning(
                "the start cache answered request %r differently from the server; the client has the cached answer",
                inner.id,
            )
        return True


async def serve_stdio(
    server: Any, wire: faststart.Wire, handed: faststart.HandOver | None, cache: faststart.CacheFile | None
) -> None:
    """Serve `server` (an MCPServer) on the wire until the client leaves; the start cache is recorded from this
    server meanwhile (and rewritten when it changed)."""
    lowlevel = server._lowlevel_server
    swallow = _Swallower(handed.answered) if handed is not None and handed.answered else None
    async with (
        stdio_streams(
            wire.read_fd,
            wire.write_fd,
            preread=handed.consumed if handed else b"",
            preread_eof=handed.eof if handed else False,
            swallow=swallow,
        ) as (read_stream, write_stream),
        anyio.create_task_group() as tg,
    ):
        if cache is not None:
            tg.start_soon(_record_cache, lowlevel, cache, handed.cached if handed else None)
        await lowlevel.run(read_stream, write_stream, lowlevel.create_initialization_options())
        # A client that leaves at once still gets its cache written (the recording takes milliseconds).


async def _record_cache(lowlevel: Any, cache: faststart.CacheFile, loaded: dict[str, Any] | None) -> None:
    try:
        with anyio.fail_after(RECORD_TIMEOUT):
            answers = await record_start_answers(lowlevel)
    except Exception:  # the cache is an optimisation: a failure to record it must not stop serving
        log.warning("could not record the start cache", exc_info=True)
        return
    if answers != loaded:
        if loaded is not None:
            log.warning(
                "the start cache differed from this server's first answers (something its key does not cover "
                "changed, e.g. the sandbox or the kernel's libraries): rewritten; this start's client got the old ones"
            )
        await anyio.to_thread.run_sync(cache.write, answers)


UNSUPPORTED_VERSION = "1999-01-01"
RECORD_TIMEOUT = 30


async def record_start_answers(lowlevel: Any) -> dict[str, Any]:
    """What this server answers to `initialize` (each handshake version it supports, and one it does not), then
    `tools/list` and `ping`, asked over in-memory streams through the SDK's own serving loop: the fast path's
    cache (`faststart.py`), exactly as the wire would carry it."""
    from mcp_types import CLIENT_CAPABILITIES_META_KEY, CLIENT_INFO_META_KEY, PROTOCOL_VERSION_META_KEY
    from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS, MODERN_PROTOCOL_VERSIONS

    initialize: dict[str, Any] = {}
    tools: dict[str, Any] = {}
    ping: Any = None
    fallback = ""
    for version in (*HANDSHAKE_PROTOCOL_VERSIONS, UNSUPPORTED_VERSION):
        params = {"protocolVersion": version, "capabilities": {}, "clientInfo": {"name": "ci-mcp", "version": "0"}}
        answers = await _ask(
            lowlevel,
            [
                {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": params},
                {"jsonrpc": "2.0", "method": "notifications/initialized"},
                {"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
                {"jsonrpc": "2.0", "id": 3, "method": "ping"},
            ],
        )
        negotiated = answers[1]["protocolVersion"]
        if version == UNSUPPORTED_VERSION:
            fallback = negotiated
            if answers[1] != initialize.get(negotiated) or answers[2] != tools.get(negotiated):
                raise RuntimeError("an unsupported version was not answered as the latest supported one")
            continue
        if negotiated != version:
            raise RuntimeError(f"the server negotiated {negotiated} for {version}")
        initialize[version], tools[version], ping = answers[1], answers[2], answers[3]
    # The 2026-07-28 era: no handshake; every request carries the envelope, and the first one opens the era.
    modern: dict[str, Any] = {}
    for version in MODERN_PROTOCOL_VERSIONS:
        meta = {
            PROTOCOL_VERSION_META_KEY: version,
            CLIENT_INFO_META_KEY: {"name": "ci-mcp", "version": "0"},
            CLIENT_CAPABILITIES_META_KEY: {},
        }
        methods = ("server/discover", "tools/list")  # (no ping in this era)
        frames = [{"jsonrpc": "2.0", "id": i, "method": m, "params": {"_meta": meta}} for i, m in enumerate(methods)]
        answers = await _ask(lowlevel, frames)
        modern[version] = {method: answers[i] for i, method in enumerate(methods)}
    envelope = {
        "version": PROTOCOL_VERSION_META_KEY,
        "info": CLIENT_INFO_META_KEY,
        "capabilities": CLIENT_CAPABILITIES_META_KEY,
    }
    return {
        "initialize": initialize,
        "fallback": fallback,
        "tools/list": tools,
        "ping": ping,
        "modern": modern,
        "envelope": envelope,
    }


async def _ask(lowlevel: Any, frames: list[dict[str, Any]]) -> dict[int, Any]:
    """The results of `frames`' requests, by id, from one connection of the SDK's own serving loop."""
    from mcp.server.runner import serve_dual_era_loop

    asked = sum("id" in frame for frame in frames)
    inbound, read_stream = create_context_streams[SessionMessage | Exception](len(frames))
    write_stream, outbound = create_context_streams[SessionMessage](len(frames))
    for frame in frames:
        await inbound.send(parse_line(json.dumps(frame)))
    answers: dict[int, Any] = {}
    async with inbound, read_stream, write_stream, outbound, anyio.create_task_group() as tg:
        loop = partial(serve_dual_era_loop, lifespan_state=None, init_options=lowlevel.create_initialization_options())
        tg.start_soon(loop, lowlevel, read_stream, write_stream)
        async for message in outbound:
            wire = json.loads(wire_json(message))
            if "id" in wire:
                answers[wire["id"]] = wire
            if len(answers) == asked:  # the end of input cancels what is in flight: close it only now
                await inbound.aclose()
    if any("result" not in answer for answer in answers.values()):
        raise RuntimeError(f"the server did not answer the start messages: {answers}")
    return {rid: answer["result"] for rid, answer in answers.items()}
