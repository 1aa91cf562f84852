"""Building the SDK clients: `azure.ai.projects.aio.AIProjectClient` and its `AsyncOpenAI` from `get_openai_client()`.

- Credential: a *sync* `TokenCredential` (by default `DefaultAzureCredential`) behind the shared
  `azure.credential.AsyncCredentialAdapter`.
- Transport: the async project client runs on the shared `azure.transport.async_transport` (requests in a thread
  pool). Project calls are rare (agent versions), so this costs nothing on a warm run. The OpenAI client uses httpx2
  natively.
- Both SDKs' retries are off: `azure/errors.call_with_retry` is the single retry policy.
- `ca_file`: a PEM bundle to trust (tests: the emulator's CA; operators: a TLS-inspecting proxy's CA).
"""

from __future__ import annotations

import contextlib
import ssl
from dataclasses import dataclass
from typing import Any

from azure.ai.projects.aio import AIProjectClient
from azure.core.credentials import TokenCredential
from openai import AsyncOpenAI, DefaultAsyncHttpxClient

from ci_mcp.backends.azure.credential import USER_AGENT, AsyncCredentialAdapter, default_credential
from ci_mcp.backends.azure.transport import async_transport


@dataclass
class AzureClients:
    project: AIProjectClient
    openai: AsyncOpenAI
    credential: AsyncCredentialAdapter

    async def aclose(self) -> None:
        for close in (self.openai.close, self.project.close, self.credential.close):
            with contextlib.suppress(Exception):  # closing is best effort; nothing useful to report
                await close()


def build_clients(
    endpoint: str,
    credential: TokenCredential | None = None,
    *,
    ca_file: str | None = None,
) -> AzureClients:
    """Make the clients (no network traffic happens here)."""
    adapter = AsyncCredentialAdapter(credential if credential is not None else default_credential())
    transport = async_transport(ca_file if ca_file else True)
    project = AIProjectClient(endpoint, adapter, transport=transport, retry_total=0, user_agent=USER_AGENT)
    openai_kwargs: dict[str, Any] = {"max_retries": 0}
    if ca_file:
        openai_kwargs["http_client"] = DefaultAsyncHttpxClient(verify=ssl.create_default_context(cafile=ca_file))
    return AzureClients(project, project.get_openai_client(**openai_kwargs), adapter)
