"""`ci-mcp doctor` checks for the `azure` backend: endpoint format, credential, reachability, model deployment.

Each check is (name, ok, message in plain words). No token or secret is ever part of a message.
"""

from __future__ import annotations

import time
from urllib.parse import urlparse

import anyio
from azure.ai.projects.aio import AIProjectClient
from azure.core.credentials import TokenCredential
from azure.core.exceptions import ResourceNotFoundError

from ci_mcp.backends.azure.clients import SCOPE, build_clients, default_credential
from ci_mcp.backends.azure.errors import AUTH_HELP, redact, translate
from ci_mcp.settings import Settings

Check = tuple[str, bool, str]
_TIMEOUT = 30.0
ENDPOINT_FORM = "https://<account>.services.ai.azure.com/api/projects/<project>"


def check_endpoint(settings: Settings) -> Check:
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


async def check_credential(credential: TokenCredential) -> Check:
    try:
        with anyio.fail_after(_TIMEOUT):
            token = await anyio.to_thread.run_sync(lambda: credential.get_token(SCOPE), abandon_on_cancel=True)
    except TimeoutError:
        return "credential", False, f"No token within {_TIMEOUT:.0f} s. {AUTH_HELP}"
    except Exception as exc:
        first = redact(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
        return "credential", False, f"Could not get a token for {SCOPE}: {first[:300]}. {AUTH_HELP}"
    minutes = max(0, int((token.expires_on - time.time()) / 60))
    return "credential", True, f"got a token for {SCOPE} (valid for {minutes} more minutes)"


async def diagnose(
    settings: Settings, *, credential: TokenCredential | None = None, ca_file: str | None = None
) -> list[Check]:
    """Run the checks in order; later checks are skipped (and say so) when an earlier one makes them moot."""
    results = [check_endpoint(settings)]
    if not results[0][1] or not settings.azure_endpoint:
        return results
    cred = credential if credential is not None else default_credential()
    results.append(await check_credential(cred))
    if not results[-1][1]:
        results.append(("reachability", False, "skipped: no credential"))
        results.append(("model deployment", False, "skipped: no credential"))
        return results
    clients = build_clients(settings.azure_endpoint, cred, ca_file=ca_file)
    try:
        results.append(await _reachability(clients.project, settings))
        if results[-1][1]:
            results.append(await _deployment(clients.project, settings))
        else:
            results.append(("model deployment", False, "skipped: the project is not reachable"))
    finally:
        await clients.aclose()
    return results


async def _reachability(project: AIProjectClient, settings: Settings) -> Check:
    try:
        with anyio.fail_after(_TIMEOUT):
            await project.agents.get(settings.azure_agent_name)
        found = f"agent '{settings.azure_agent_name}' exists"
    except ResourceNotFoundError:
        found = f"agent '{settings.azure_agent_name}' will be created on first run"
    except TimeoutError:
        return "reachability", False, f"No answer from the project endpoint within {_TIMEOUT:.0f} s."
    except Exception as exc:
        return "reachability", False, str(translate(exc, "calling the project"))
    return "reachability", True, f"the project answers and accepts the identity; {found}"


async def _deployment(project: AIProjectClient, settings: Settings) -> Check:
    try:
        with anyio.fail_after(_TIMEOUT):
            deployment = await project.deployments.get(settings.azure_model)
    except ResourceNotFoundError:
        return (
            "model deployment",
            False,
            f"The project has no model deployment named '{settings.azure_model}'. Deploy a model that supports "
            "Code Interpreter (e.g. gpt-4.1, gpt-4o) and set AZURE_AI_MODEL_DEPLOYMENT_NAME to its deployment name.",
        )
    except TimeoutError:
        return "model deployment", False, f"No answer within {_TIMEOUT:.0f} s."
    except Exception as exc:
        return "model deployment", False, str(translate(exc, "looking up the model deployment"))
    model = getattr(deployment, "model_name", None) or "unknown model"
    return "model deployment", True, f"'{settings.azure_model}' is deployed ({model})"
