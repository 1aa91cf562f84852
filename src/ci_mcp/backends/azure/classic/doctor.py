"""`ci-mcp doctor` checks for the azure-classic backend.

`offline_checks` needs no network: the extra, the endpoint's form, the model name, the days to retirement.
`diagnose` adds the credential (`azure/checks.py`, shared with the `azure` backend's doctor), one call to the classic
agents API and the lookup of the model deployment in the project. Each check is (name, ok, message in plain words);
a warning is ok with its advice in the message; a check that could not be made is not ok and says "not checked" and
why.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from functools import partial
from typing import TYPE_CHECKING, Any

import anyio

from ci_mcp.backends.azure.checks import TIMEOUT, Check, check_credential, check_project_endpoint
from ci_mcp.backends.azure.classic.calls import RetryPolicy, call_sdk
from ci_mcp.backends.azure.classic.client import MISSING_EXTRA, build_client, client_kwargs, sdk_version
from ci_mcp.backends.azure.credential import AsyncCredentialAdapter, default_credential
from ci_mcp.errors import CiMcpError, NotFoundError
from ci_mcp.settings import Settings

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential

RETIREMENT_DATE = dt.date(2027, 3, 31)
MIGRATION_DOC = "docs/classic-backend.md"
_ONE_TRY = RetryPolicy(attempts=1)
"""Doctor asks once: a failure is reported, not waited out."""
_NO_CODE_INTERPRETER = frozenset({"o1", "o1-mini", "o3-mini", "gpt-5-pro", "gpt-5-chat"})


def offline_checks(settings: Settings, *, today: dt.date | None = None) -> list[Check]:
    """The checks that need no network; the model deployment is only judged by its name here."""
    sdk, endpoint, retirement = _prerequisites(settings, today)
    model = _model_name(settings) or (
        "model deployment",
        False,
        f"not checked: '{settings.azure_model}' is looked up in the project only once the endpoint and a "
        "credential work",
    )
    return [sdk, endpoint, model, retirement]


def _prerequisites(settings: Settings, today: dt.date | None) -> list[Check]:
    return [_sdk(), check_project_endpoint(settings), _retirement(today or dt.date.today())]


async def diagnose(
    settings: Settings,
    *,
    today: dt.date | None = None,
    credential: TokenCredential | None = None,
    client_options: Mapping[str, Any] | None = None,
) -> list[Check]:
    """All checks; the online ones are skipped (and say so) when the extra, the endpoint or the credential is wrong."""
    checks = _prerequisites(settings, today)
    by_name = _model_name(settings)
    if not (checks[0][1] and checks[1][1]) or not settings.azure_endpoint:
        return [
            *checks,
            ("classic agents API", False, "skipped: fix the checks above first"),
            by_name or ("model deployment", False, "not checked: fix the checks above first"),
        ]
    cred = credential if credential is not None else default_credential()
    checks.append(await check_credential(cred))
    if not checks[-1][1]:
        return [
            *checks,
            ("classic agents API", False, "skipped: no credential"),
            by_name or ("model deployment", False, "not checked: no credential to ask the project with"),
        ]
    checks.append(await _agents_api(settings, settings.azure_endpoint, cred, client_options))
    if by_name is None and not checks[-1][1]:
        by_name = ("model deployment", False, "not checked: the project did not answer (see the check above)")
    checks.append(by_name or await _deployment(settings, settings.azure_endpoint, cred, client_options))
    return checks


async def _agents_api(
    settings: Settings, endpoint: str, credential: TokenCredential, options: Mapping[str, Any] | None
) -> Check:
    client = build_client(endpoint, credential, options)
    name = settings.azure_agent_name

    async def find() -> bool:
        async for agent in client.list_agents(limit=100):
            if agent.name == name:
                return True
        return False

    try:
        with anyio.fail_after(TIMEOUT):
            found = await call_sdk(find, what="listing classic agents", sleep=_never_wait, policy=_ONE_TRY)
    except TimeoutError:
        return "classic agents API", False, f"no answer within {TIMEOUT:.0f} s from {endpoint}"
    except CiMcpError as exc:
        return "classic agents API", False, str(exc)
    finally:
        with anyio.CancelScope(shield=True):
            await client.close()
    state = "exists and will be reused" if found else "does not exist yet and will be created on the first run"
    return "classic agents API", True, f"reachable; agent '{name}' {state}"


def _sdk() -> Check:
    version = sdk_version()
    if version is None:
        return "azure-ai-agents", False, MISSING_EXTRA
    if version.split(".", 1)[0] != "1":
        return "azure-ai-agents", True, f"warning: version {version} is installed; ci-mcp is tested with 1.x (>=1.1)"
    return "azure-ai-agents", True, f"version {version}"


def _model_name(settings: Settings) -> Check | None:
    """The failed check of a model known not to support the Code Interpreter; None for any other name."""
    model = settings.azure_model
    if model.lower() in _NO_CODE_INTERPRETER:
        return (
            "model deployment",
            False,
            f"'{model}' does not support the Code Interpreter tool; deploy e.g. gpt-4.1 or gpt-4o and set "
            "CI_MCP_AZURE_MODEL to its deployment name.",
        )
    return None


async def _deployment(
    settings: Settings, endpoint: str, credential: TokenCredential, options: Mapping[str, Any] | None
) -> Check:
    """Look the deployment up in the project (azure-ai-projects `deployments.get`, the call the `azure` doctor makes):
    classic agents name their model by deployment, and a wrong name only fails at the first run."""
    from azure.ai.projects.aio import AIProjectClient

    model = settings.azure_model
    project = AIProjectClient(endpoint, AsyncCredentialAdapter(credential), **client_kwargs(options))

    try:
        with anyio.fail_after(TIMEOUT):
            deployment = await call_sdk(
                partial(project.deployments.get, model),
                what="looking up the model deployment",
                sleep=_never_wait,
                policy=_ONE_TRY,
            )
    except TimeoutError:
        return "model deployment", False, f"not checked: no answer within {TIMEOUT:.0f} s from {endpoint}"
    except NotFoundError:
        return (
            "model deployment",
            False,
            f"the project has no model deployment named '{model}'. Deploy a model that supports the Code "
            "Interpreter (e.g. gpt-4.1, gpt-4o) and set CI_MCP_AZURE_MODEL to its deployment name.",
        )
    except CiMcpError as exc:
        return "model deployment", False, f"not checked: {exc}"
    finally:
        with anyio.CancelScope(shield=True):
            await project.close()
    name = getattr(deployment, "model_name", None)
    version = getattr(deployment, "model_version", None)
    what = " ".join(str(v) for v in (name, version) if v) or "model not named by the service"
    return "model deployment", True, f"'{model}' is deployed in the project ({what})"


def _retirement(today: dt.date) -> Check:
    days = (RETIREMENT_DATE - today).days
    advice = f"Move to CI_MCP_BACKEND=azure (new Foundry agents); see {MIGRATION_DOC}."
    if days < 0:
        return "retirement", False, f"classic agents were retired on {RETIREMENT_DATE}. {advice}"
    return "retirement", True, f"warning: classic agents retire on {RETIREMENT_DATE} ({days} days from now). {advice}"


async def _never_wait(seconds: float) -> None:
    return None
