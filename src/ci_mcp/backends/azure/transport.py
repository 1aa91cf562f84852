"""The HTTP transport the async azure-core clients of both Azure backends run on.

azure-core's default async transport needs aiohttp, which ci-mcp does not install, so the clients run on
`AsyncioRequestsTransport`: requests in the event loop's thread pool. Its `send` ignores `read_timeout` (and hands
it on to requests, which refuses it); `RequestsTransport` reads it as azure-core's sync `RequestsTransport` does:
requests gets `(connection_timeout, read_timeout)`, from the call or else from the transport's configuration.
"""

from __future__ import annotations

from typing import Any

from azure.core.pipeline.transport import AsyncioRequestsTransport


class RequestsTransport(AsyncioRequestsTransport):  # type: ignore[misc]  # azure-core exports it untyped
    async def send(self, request: Any, **kwargs: Any) -> Any:
        connect = kwargs.pop("connection_timeout", self.connection_config.timeout)
        read = kwargs.pop("read_timeout", self.connection_config.read_timeout)
        return await super().send(request, connection_timeout=(connect, read), **kwargs)


def async_transport(verify: bool | str = True, **options: Any) -> RequestsTransport:
    """`verify`: True, or a PEM bundle to trust (the emulator's CA in tests, a TLS-inspecting proxy's CA).
    `options`: azure-core's connection options (`connection_timeout`, `read_timeout`, `connection_cert`)."""
    return RequestsTransport(**options, connection_verify=verify)
