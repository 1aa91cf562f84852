"""Picks and builds the configured backend. Azure SDKs are imported only when their backend is chosen."""

from __future__ import annotations

from ci_mcp.backends.base import Backend
from ci_mcp.errors import ConfigError
from ci_mcp.settings import Settings
from ci_mcp.store import FileStore


def create_backend(settings: Settings, store: FileStore) -> Backend:
    if settings.backend == "local":
        from ci_mcp.backends.local.backend import LocalBackend

        return LocalBackend(settings, store)
    if settings.backend == "azure":
        from ci_mcp.backends.azure.agents.backend import AzureAgentsBackend

        ca = str(settings.azure_ca_bundle) if settings.azure_ca_bundle else None
        return AzureAgentsBackend(settings, store, ca_file=ca)
    if settings.backend == "azure-classic":
        try:
            from ci_mcp.backends.azure.classic.backend import ClassicAgentsBackend
        except ImportError as exc:
            raise ConfigError(
                "CI_MCP_BACKEND=azure-classic needs the classic extra: pip install 'ci-mcp[classic]' "
                f"({exc.name} is missing)."
            ) from exc
        options = {"connection_verify": str(settings.azure_ca_bundle)} if settings.azure_ca_bundle else None
        return ClassicAgentsBackend(settings, store, client_options=options)
    raise ConfigError(f"CI_MCP_BACKEND={settings.backend!r} is not one of local, azure, azure-classic.")
