"""Building the async azure-ai-agents client: the optional extra, the credential adapter and the shared transport."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ci_mcp.backends.azure.credential import USER_AGENT, AsyncCredentialAdapter
from ci_mcp.backends.azure.transport import async_transport
from ci_mcp.errors import ConfigError

if TYPE_CHECKING:
    from azure.ai.agents.aio import AgentsClient
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
    "user_agent": USER_AGENT,
}
_TRANSPORT_OPTIONS = ("connection_verify", "connection_cert", "connection_timeout", "read_timeout")


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


def client_kwargs(options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Our defaults for an async azure-core client; `options` (transport, auth policy, TLS, timeouts) override them.

    The TLS and timeout options go to the shared transport (unless `options` brings its own `transport`)."""
    kwargs = {**DEFAULT_CLIENT_OPTIONS, **(options or {})}
    picked = {key: kwargs.pop(key) for key in _TRANSPORT_OPTIONS if key in kwargs}
    if "transport" not in kwargs:
        kwargs["transport"] = async_transport(picked.pop("connection_verify", True), **picked)
    return kwargs


def build_client(endpoint: str, credential: TokenCredential, options: Mapping[str, Any] | None = None) -> AgentsClient:
    """An `azure.ai.agents.aio.AgentsClient` on `endpoint` (no network traffic happens here)."""
    require_sdk()
    from azure.ai.agents.aio import AgentsClient

    return AgentsClient(endpoint, AsyncCredentialAdapter(credential), **client_kwargs(options))
