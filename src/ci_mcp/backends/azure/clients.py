"""Building the SDK clients: `azure.ai.projects.aio.AIProjectClient` and its `AsyncOpenAI` from `get_openai_client()`.

- Credential: a *sync* `TokenCredential` (by default `DefaultAzureCredential`), presented to the async clients by
  `AsyncCredentialAdapter`, which fetches tokens in a worker thread. The async credentials of azure-identity would
  need aiohttp for their own HTTP calls (managed identity, service principal), which ci-mcp does not install.
- Transport: the async project client runs on azure-core's `AsyncioRequestsTransport` (requests in a thread pool),
  again because the default async transport needs aiohttp. Project calls are rare (agent versions), so this costs
  nothing on a warm run. The OpenAI client uses httpx2 natively.
- Both SDKs' retries are off: `errors.call_with_retry` is the single retry policy.
- `ca_file`: a PEM bundle to trust (tests: the emulator's CA; operators: a TLS-inspecting proxy's CA).
"""

from __future__ import annotations

import contextlib
import ssl
from dataclasses import dataclass
from typing import Any

import anyio
from azure.ai.projects.aio import AIProjectClient
from azure.core.credentials import AccessToken, AccessTokenInfo, TokenCredential
from azure.core.pipeline.transport import AsyncioRequestsTransport
from openai import AsyncOpenAI, DefaultAsyncHttpxClient

SCOPE = "https://ai.azure.com/.default"
USER_AGENT = "ci-mcp"


class AsyncCredentialAdapter:
    """A sync TokenCredential seen as an AsyncTokenCredential; token calls run in a worker thread."""

    def __init__(self, credential: TokenCredential) -> None:
        self.credential = credential

    async def get_token(
        self,
        *scopes: str,
        claims: str | None = None,
        tenant_id: str | None = None,
        enable_cae: bool = False,
        **kwargs: Any,
    ) -> AccessToken:
        def fetch() -> AccessToken:
            return self.credential.get_token(
                *scopes, claims=claims, tenant_id=tenant_id, enable_cae=enable_cae, **kwargs
            )

        return await anyio.to_thread.run_sync(fetch)

    async def get_token_info(self, *scopes: str, options: Any = None) -> AccessTokenInfo:
        info_fn = getattr(self.credential, "get_token_info", None)
        if info_fn is None:
            token = await self.get_token(*scopes)
            return AccessTokenInfo(token.token, token.expires_on)

        def fetch() -> AccessTokenInfo:
            result: AccessTokenInfo = info_fn(*scopes, options=options)
            return result

        return await anyio.to_thread.run_sync(fetch)

    async def close(self) -> None:
        close = getattr(self.credential, "close", None)
        if close is not None:
            await anyio.to_thread.run_sync(close)

    async def __aenter__(self) -> AsyncCredentialAdapter:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def default_credential() -> TokenCredential:
    from azure.identity import DefaultAzureCredential

    return DefaultAzureCredential()


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
    transport = AsyncioRequestsTransport(connection_verify=ca_file if ca_file else True)
    project = AIProjectClient(endpoint, adapter, transport=transport, retry_total=0, user_agent=USER_AGENT)
    openai_kwargs: dict[str, Any] = {"max_retries": 0}
    if ca_file:
        openai_kwargs["http_client"] = DefaultAsyncHttpxClient(verify=ssl.create_default_context(cafile=ca_file))
    return AzureClients(project, project.get_openai_client(**openai_kwargs), adapter)
