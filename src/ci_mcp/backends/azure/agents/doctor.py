"""`ci-mcp doctor` checks for the `azure` backend: endpoint format, credential, reachability, model deployment.

Each check is (name, ok, message in plain words); the first two are the shared `azure/checks.py` ones. No token or
secret is ever part of a message.
"""

from __future__ import annotations

import anyio
from azure.ai.projects.aio import AIProjectClient
from azure.core.credentials import TokenCredential
from azure.core.exceptions import ResourceNotFoundError

from ci_mcp.backends.azure.agents.clients import build_clients
from ci_mcp.backends.azure.checks import TIMEOUT, Check, check_credential, check_endpoint_format
from ci_mcp.backends.azure.credential import default_credential
from ci_mcp.backends.azure.errors import translate
from ci_mcp.settings import Settings


async def diagnose(
    settings: Settings, *, credential: TokenCredential | None = None, ca_file: str | None = None
) -> list[Check]:
    """Run the checks in order; later checks are skipped (and say so) when an earlier one makes them moot."""
    results = [check_endpoint_format(settings)]
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
        with anyio.fail_after(TIMEOUT):
            await project.agents.get(settings.azure_agent_name)
        found = f"agent '{settings.azure_agent_name}' exists"
    except ResourceNotFoundError:
        found = f"agent '{settings.azure_agent_name}' will be created on first run"
    except TimeoutError:
        return "reachability", False, f"No answer from the project endpoint within {TIMEOUT:.0f} s."
    except Exception as exc:
        return "reachability", False, str(translate(exc, "calling the project"))
    return "reachability", True, f"the project answers and accepts the identity; {found}"


async def _deployment(project: AIProjectClient, settings: Settings) -> Check:
    try:
        with anyio.fail_after(TIMEOUT):
            deployment = await project.deployments.get(settings.azure_model)
    except ResourceNotFoundError:
        return (
            "model deployment",
            False,
            f"The project has no model deployment named '{settings.azure_model}'. Deploy a model that supports "
            "Code Interpreter (e.g. gpt-4.1, gpt-4o) and set AZURE_AI_MODEL_DEPLOYMENT_NAME to its deployment name.",
        )
    except TimeoutError:
        return "model deployment", False, f"No answer within {TIMEOUT:.0f} s."
    except Exception as exc:
        return "model deployment", False, str(translate(exc, "looking up the model deployment"))
    model = getattr(deployment, "model_name", None) or "unknown model"
    return "model deployment", True, f"'{settings.azure_model}' is deployed ({model})"
