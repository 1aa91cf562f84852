"""`ci-mcp doctor` checks for the azure backend, against the emulator."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from azure.core.exceptions import ClientAuthenticationError

from ci_mcp.backends.azure.agents.doctor import diagnose
from ci_mcp.settings import Settings
from tests.azure_emulator.credential import EmulatorCredential
from tests.azure_emulator.server import Emulator

pytestmark = pytest.mark.anyio


async def test_doctor_passes_every_check_against_a_healthy_project(
    emu: Emulator, azure_settings: Callable[..., Settings]
) -> None:
    checks = await diagnose(azure_settings(), credential=emu.credential(), ca_file=emu.ca_file)

    assert [name for name, _, _ in checks] == ["endpoint format", "credential", "reachability", "model deployment"]
    assert all(ok for _, ok, _ in checks), checks
    assert "emulator-token" not in repr(checks)


async def test_doctor_explains_an_endpoint_that_is_not_a_project_endpoint(
    azure_settings: Callable[..., Settings],
) -> None:
    checks = await diagnose(azure_settings(azure_endpoint="https://myaccount.services.ai.azure.com"))

    assert checks == [("endpoint format", False, checks[0][2])]
    assert "/api/projects/<project>" in checks[0][2]


async def test_doctor_names_the_connection_string_as_unsupported(azure_settings: Callable[..., Settings]) -> None:
    checks = await diagnose(azure_settings(azure_endpoint=None, project_connection_string="h;s;rg;p"))

    assert not checks[0][1] and "AZURE_AI_PROJECT_ENDPOINT" in checks[0][2] and "h;s;rg;p" not in checks[0][2]


async def test_doctor_explains_how_to_sign_in_when_no_credential_works(
    emu: Emulator, azure_settings: Callable[..., Settings]
) -> None:
    failing = EmulatorCredential(fail_with=ClientAuthenticationError("no credential in the chain worked"))

    checks = await diagnose(azure_settings(), credential=failing, ca_file=emu.ca_file)

    assert [(n, ok) for n, ok, _ in checks][1:] == [
        ("credential", False),
        ("reachability", False),
        ("model deployment", False),
    ]
    assert "az login" in checks[1][2] and "no credential in the chain worked" in checks[1][2]


async def test_doctor_reports_a_missing_model_deployment_and_the_setting_to_change(
    emu: Emulator, azure_settings: Callable[..., Settings]
) -> None:
    checks = await diagnose(
        azure_settings(azure_model="gpt-9-missing"), credential=emu.credential(), ca_file=emu.ca_file
    )

    name, ok, message = checks[-1]
    assert name == "model deployment" and not ok
    assert "gpt-9-missing" in message and "AZURE_AI_MODEL_DEPLOYMENT_NAME" in message


async def test_doctor_reports_a_rejected_identity_as_unreachable_with_the_role_to_grant(
    emu: Emulator, azure_settings: Callable[..., Settings]
) -> None:
    checks = await diagnose(azure_settings(), credential=EmulatorCredential("not-accepted"), ca_file=emu.ca_file)

    assert checks[1][1] and not checks[2][1]
    assert "az login" in checks[2][2] or "Azure AI User" in checks[2][2]
