"""The HTTP transport the async azure-core clients of both Azure backends run on.

azure-core's default async transport needs aiohttp, which ci-mcp does not install, so the clients run on
`AsyncioRequestsTransport`: requests in the event loop's thread pool. Two things are added to it:
- `read_timeout`: its `send` ignores it (and hands it on to requests, which refuses it); `RequestsTransport` reads it
  as azure-core's sync transport does: requests gets `(connection_timeout, read_timeout)`, from the call or else
  from the transport's configuration.
- Letting go of a stream: a streamed body is read chunk by chunk in a pool thread, and a thread waiting for the next
  chunk does not stop when its caller does (it would hold the process at exit until the read timeout).
  `streamed_responses()` collects the streamed responses sent in a block, and `abort` shuts their sockets, so such a
  read returns at once.
- Threads: every request and every chunk of a run's event stream is a job in the event loop's default executor,
  min(32, cores + 4) threads (6 here), and a waiting stream holds its thread. `ensure_io_threads` gives the loop a
  larger pool when an Azure backend starts, so a few concurrent runs cannot starve every other request.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import weakref
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextvars import ContextVar
from typing import Any

from azure.core.pipeline.transport import AsyncioRequestsTransport

_collecting: ContextVar[list[Any] | None] = ContextVar("ci_mcp_azure_streamed_responses", default=None)


class RequestsTransport(AsyncioRequestsTransport):  # type: ignore[misc]  # azure-core exports it untyped
    async def send(self, request: Any, **kwargs: Any) -> Any:
        connect = kwargs.pop("connection_timeout", self.connection_config.timeout)
        read = kwargs.pop("read_timeout", self.connection_config.read_timeout)
        streamed = bool(kwargs.get("stream"))
        response = await super().send(request, connection_timeout=(connect, read), **kwargs)
        collected = _collecting.get()
        if streamed and collected is not None:
            collected.append(response)
        return response


IO_THREADS = 64
_pools: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, ThreadPoolExecutor] = weakref.WeakKeyDictionary()


def ensure_io_threads(threads: int = IO_THREADS) -> None:
    """Give the running event loop a default executor of `threads` threads (once per loop)."""
    loop = asyncio.get_running_loop()
    if loop not in _pools:
        pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="ci-mcp-azure-io")
        loop.set_default_executor(pool)
        _pools[loop] = pool


def async_transport(verify: bool | str = True, **options: Any) -> RequestsTransport:
    """`verify`: True, or a PEM bundle to trust (the emulator's CA in tests, a TLS-inspecting proxy's CA).
    `options`: azure-core's connection options (`connection_timeout`, `read_timeout`, `connection_cert`)."""
    return RequestsTransport(**options, connection_verify=verify)


@contextlib.contextmanager
def streamed_responses() -> Iterator[list[Any]]:
    """The responses with a streamed body that this task sends through a `RequestsTransport` inside the block."""
    collected: list[Any] = []
    token = _collecting.set(collected)
    try:
        yield collected
    finally:
        _collecting.reset(token)


def abort(response: Any) -> None:
    """Shut the socket of a streamed response still open (a read blocked on it fails at once), then close it."""
    raw = getattr(getattr(response, "internal_response", None), "raw", None)
    sock = getattr(getattr(raw, "connection", None), "sock", None)
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
    close = getattr(getattr(response, "internal_response", None), "close", None)
    if close is not None:
        with contextlib.suppress(Exception):
            close()
