"""Building the azure-ai-agents client: the optional extra, the credential and the transport options."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ci_mcp.errors import ConfigError

if TYPE_CHECKING:
    from azure.ai.agents import AgentsClient
    from azure.core.credentials import TokenCredential

MISSING_EXTRA = (
    "CI_MCP_BACKEND=azure-classic needs the azure-ai-agents package, which is an optional extra: "
    "pip install 'ci-mcp[classic]' (or pip install 'azure-ai-agents>=1.1,<2'). "
    "Classic agents retire on 2027-03-31; for new set-ups use CI_MCP_BACKEND=azure instead."
)

DEFAULT_CLIENT_OPTIONS: Mapping[str, Any] = {
    "retry_total": 0,  # retries happen in azure/errors.call_with_retry, against the run's deadline
    "connection_timeout": 15,
    "read_timeout": 120,
    "user_agent": "ci-mcp",
}


def sdk_version() -> str | None:
    """The installed azure-ai-agents version, or None when the extra is missing."""
    try:
        from azure.ai.agents import _version
    except ImportError:
        return None
    return str(_version.VERSION)


def require_sdk() -> None:
    """Raise ConfigError with the install command when the extra is missing."""
    try:
        import azure.ai.agents  # noqa: F401
    except ImportError as exc:
        raise ConfigError(MISSING_EXTRA) from exc


def build_client(endpoint: str, credential: TokenCredential, options: Mapping[str, Any] | None = None) -> AgentsClient:
    """An `AgentsClient` on `endpoint` with our defaults; `options` (transport, auth policy, TLS) override them."""
    require_sdk()
    from azure.ai.agents import AgentsClient

    kwargs = {**DEFAULT_CLIENT_OPTIONS, **(options or {})}
    return AgentsClient(endpoint, credential, **kwargs)
