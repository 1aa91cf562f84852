"""`ci-mcp doctor` checks both Azure backends share: the project endpoint's form and the credential.

Each check is (name, ok, message in plain words); a warning is ok with its advice in the message. No token or secret
is ever part of a message.
"""

from __future__ import annotations

import time
from urllib.parse import urlparse

import anyio
from azure.core.credentials import TokenCredential

from ci_mcp.backends.azure.credential import SCOPE
from ci_mcp.backends.azure.errors import AUTH_HELP, redact
from ci_mcp.settings import Settings

Check = tuple[str, bool, str]

ENDPOINT_FORM = "https://<account>.services.ai.azure.com/api/projects/<project>"
TIMEOUT = 30.0
"""How long a doctor check waits for Azure."""


def check_endpoint_format(settings: Settings) -> Check:
    """The `azure` backend's strict check: an https URL ending in /api/projects/<project>."""
    endpoint = settings.azure_endpoint
    if not endpoint:
        if settings.project_connection_string:
            return (
                "endpoint format",
                False,
                "PROJECT_CONNECTION_STRING (the 2024 hub format) is no longer supported by any Azure AI SDK. Set "
                f"AZURE_AI_PROJECT_ENDPOINT to your project endpoint instead: {ENDPOINT_FORM}",
            )
        return "endpoint format", False, f"AZURE_AI_PROJECT_ENDPOINT is not set. Expected {ENDPOINT_FORM}"
    url = urlparse(endpoint)
    parts = [p for p in url.path.split("/") if p]
    if url.scheme not in ("https", "http") or not url.hostname:
        return "endpoint format", False, f"'{redact(endpoint)}' is not a URL. Expected {ENDPOINT_FORM}"
    if len(parts) != 3 or parts[:2] != ["api", "projects"]:
        return (
            "endpoint format",
            False,
            f"'{redact(endpoint)}' does not end in /api/projects/<project>. Copy the project endpoint from the "
            f"Foundry portal (project overview): {ENDPOINT_FORM}",
        )
    if url.scheme != "https":
        return "endpoint format", False, "The endpoint must use https (Azure refuses bearer tokens over http)."
    note = "" if url.hostname.endswith(".services.ai.azure.com") else " (not a *.services.ai.azure.com host)"
    return "endpoint format", True, f"project '{parts[2]}' at {url.hostname}{note}"


def check_project_endpoint(settings: Settings) -> Check:
    """The `azure-classic` backend's lenient check: https is required, an unusual path is only a warning."""
    endpoint = settings.azure_endpoint
    if not endpoint:
        if settings.project_connection_string:
            return (
                "project endpoint",
                False,
                "PROJECT_CONNECTION_STRING (the 2024 hub format) is not supported by any current Azure AI SDK. "
                f"Set AZURE_AI_PROJECT_ENDPOINT={ENDPOINT_FORM}",
            )
        return "project endpoint", False, f"not set: set AZURE_AI_PROJECT_ENDPOINT={ENDPOINT_FORM}"
    url = urlparse(endpoint)
    if url.scheme != "https":
        return "project endpoint", False, f"{endpoint} is not https; Azure bearer-token auth refuses plain http."
    if "/api/projects/" not in url.path:
        return (
            "project endpoint",
            True,
            f"warning: {endpoint} does not look like a Foundry project endpoint ({ENDPOINT_FORM}); copy it from "
            "the project's overview page.",
        )
    return "project endpoint", True, endpoint


async def check_credential(credential: TokenCredential) -> Check:
    try:
        with anyio.fail_after(TIMEOUT):
            token = await anyio.to_thread.run_sync(lambda: credential.get_token(SCOPE), abandon_on_cancel=True)
    except TimeoutError:
        return "credential", False, f"No token within {TIMEOUT:.0f} s. {AUTH_HELP}"
    except Exception as exc:
        first = redact(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
        return "credential", False, f"Could not get a token for {SCOPE}: {first[:300]}. {AUTH_HELP}"
    minutes = max(0, int((token.expires_on - time.time()) / 60))
    return "credential", True, f"got a token for {SCOPE} (valid for {minutes} more minutes)"
