"""The credential both Azure backends sign in with.

A *sync* `TokenCredential` (by default `DefaultAzureCredential`); the async clients see it through
`AsyncCredentialAdapter`, which fetches tokens in a worker thread. The async credentials of azure-identity would
need aiohttp for their own HTTP calls (managed identity, service principal), which ci-mcp does not install.
"""

from __future__ import annotations

from typing import Any

import anyio
from azure.core.credentials import AccessToken, AccessTokenInfo, TokenCredential

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
