"""A stand-in for DefaultAzureCredential: hands out the token the emulator accepts and records the scopes asked."""

from __future__ import annotations

import time
from typing import Any

from azure.core.credentials import AccessToken, AccessTokenInfo


class EmulatorCredential:
    """Sync TokenCredential (both `get_token` and `get_token_info`, as azure-core 1.41 prefers the latter)."""

    def __init__(self, token: str = "emulator-token", fail_with: Exception | None = None) -> None:
        self.token = token
        self.fail_with = fail_with
        self.scopes: list[tuple[str, ...]] = []

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        info = self.get_token_info(*scopes)
        return AccessToken(info.token, info.expires_on)

    def get_token_info(self, *scopes: str, options: Any = None) -> AccessTokenInfo:
        self.scopes.append(scopes)
        if self.fail_with is not None:
            raise self.fail_with
        return AccessTokenInfo(self.token, int(time.time()) + 3600)

    def close(self) -> None:
        return None
