"""`ci-mcp doctor` checks for the azure-classic backend.

`offline_checks` needs no network: the extra, the endpoint's form, the model, the days to retirement.
`diagnose` adds the credential (shared with the `azure` backend's doctor) and one call to the classic agents API.
Each check is (name, ok, message in plain words); a warning is ok with its advice in the message.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import anyio

from ci_mcp.backends.azure.classic_client import MISSING_EXTRA, build_client, default_credential, sdk_version
from ci_mcp.backends.azure.classic_errors import RetryPolicy, call_sdk
from ci_mcp.errors import CiMcpError
from ci_mcp.settings import Settings

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential

Check = tuple[str, bool, str]

RETIREMENT_DATE = dt.date(2027, 3, 31)
MIGRATION_DOC = "docs/classic-backend.md"
ENDPOINT_FORM = "https://<account>.services.ai.azure.com/api/projects/<project>"
_NO_CODE_INTERPRETER = frozenset({"o1", "o1-mini", "o3-mini", "gpt-5-pro", "gpt-5-chat"})
_TIMEOUT = 30.0


def offline_checks(settings: Settings, *, today: dt.date | None = None) -> list[Check]:
    return [_sdk(), _endpoint(settings), _model(settings), _retirement(today or dt.date.today())]


async def diagnose(
    settings: Settings,
    *,
    today: dt.date | None = None,
    credential: TokenCredential | None = None,
    client_options: Mapping[str, Any] | None = None,
) -> list[Check]:
    """All checks; the online ones are skipped (and say so) when the extra or the endpoint is wrong."""
    checks = offline_checks(settings, today=today)
    if not (checks[0][1] and checks[1][1]) or not settings.azure_endpoint:
        return [*checks, ("classic agents API", False, "skipped: fix the checks above first")]
    from ci_mcp.backends.azure.doctor import check_credential

    cred = credential if credential is not None else default_credential()
    checks.append(await check_credential(cred))
    if not checks[-1][1]:
        return [*checks, ("classic agents API", False, "skipped: no credential")]
    checks.append(await _agents_api(settings, settings.azure_endpoint, cred, client_options))
    return checks


async def _agents_api(
    settings: Settings, endpoint: str, credential: TokenCredential, options: Mapping[str, Any] | None
) -> Check:
    client = build_client(endpoint, credential, options)
    name = settings.azure_agent_name

    def find() -> bool:
        return any(a.name == name for a in client.list_agents(limit=100))

    async def never_wait(seconds: float) -> None:
        return None

    try:
        with anyio.fail_after(_TIMEOUT):
            found = await call_sdk(
                find,
                what="listing classic agents",
                sleep=never_wait,
                policy=RetryPolicy(attempts=1),
            )
    except TimeoutError:
        return "classic agents API", False, f"no answer within {_TIMEOUT:.0f} s from {endpoint}"
    except CiMcpError as exc:
        return "classic agents API", False, str(exc)
    finally:
        await anyio.to_thread.run_sync(client.close)
    state = "exists and will be reused" if found else "does not exist yet and will be created on the first run"
    return "classic agents API", True, f"reachable; agent '{name}' {state}"


def _sdk() -> Check:
    version = sdk_version()
    if version is None:
        return "azure-ai-agents", False, MISSING_EXTRA
    if version.split(".", 1)[0] != "1":
        return "azure-ai-agents", True, f"warning: version {version} is installed; ci-mcp is tested with 1.x (>=1.1)"
    return "azure-ai-agents", True, f"version {version}"


def _endpoint(settings: Settings) -> Check:
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


def _model(settings: Settings) -> Check:
    model = settings.azure_model
    if model.lower() in _NO_CODE_INTERPRETER:
        return (
            "model deployment",
            False,
            f"'{model}' does not support the Code Interpreter tool; deploy e.g. gpt-4.1 or gpt-4o and set "
            "CI_MCP_AZURE_MODEL to its deployment name.",
        )
    return "model deployment", True, f"agent '{settings.azure_agent_name}' on deployment '{model}'"


def _retirement(today: dt.date) -> Check:
    days = (RETIREMENT_DATE - today).days
    advice = f"Move to CI_MCP_BACKEND=azure (new Foundry agents); see {MIGRATION_DOC}."
    if days < 0:
        return "retirement", False, f"classic agents were retired on {RETIREMENT_DATE}. {advice}"
    return "retirement", True, f"warning: classic agents retire on {RETIREMENT_DATE} ({days} days from now). {advice}"
