"""The transport both Azure backends' async azure-core clients share (`azure/transport.py`)."""

from __future__ import annotations

from typing import Any

import pytest
import requests
from azure.core.exceptions import ServiceRequestError
from azure.core.rest import HttpRequest

from ci_mcp.backends.azure.transport import async_transport

pytestmark = pytest.mark.anyio


class RecordingSession(requests.Session):
    """Records what each request would have been sent with, and sends nothing."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[dict[str, Any]] = []

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> requests.Response:
        self.sent.append(kwargs)
        raise requests.exceptions.ConnectionError("not sent")


async def send(session: RecordingSession, **call_options: Any) -> dict[str, Any]:
    transport = async_transport("/tmp/ca.pem", connection_timeout=15, read_timeout=120, session=session)
    with pytest.raises(ServiceRequestError):
        await transport.send(HttpRequest("GET", "https://example.invalid/"), **call_options)
    return session.sent[-1]


async def test_requests_gets_the_connect_and_read_timeouts_of_the_transport_and_its_trust() -> None:
    sent = await send(RecordingSession())

    assert sent["timeout"] == (15, 120)
    assert sent["verify"] == "/tmp/ca.pem"


async def test_a_call_can_give_a_longer_read_timeout_for_a_stream_that_outlives_the_default() -> None:
    sent = await send(RecordingSession(), read_timeout=630.0)

    assert sent["timeout"] == (15, 630.0)
    assert "read_timeout" not in sent
