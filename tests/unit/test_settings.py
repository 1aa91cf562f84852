"""src/ci_mcp/settings.py: how the environment's strings become settings, and the start-up checks' messages.

These build `Settings` with `Settings.from_env` from an explicit environment: that parsing is what `cli.py` relies
on (a plain `Settings(...)` never reads the process environment)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from ci_mcp.errors import ConfigError, InvalidInputError
from ci_mcp.settings import Settings


@pytest.fixture(autouse=True)
def no_unprefixed_azure_names(monkeypatch: pytest.MonkeyPatch) -> None:
    """The root conftest clears CI_MCP_*, AZURE_* and two more; these aliases are read too."""
    for name in ("FOUNDRY_PROJECT_ENDPOINT", "PROJECT_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)


def from_env(monkeypatch: pytest.MonkeyPatch, **env: str) -> Settings:
    return Settings.from_env(env)


def test_allowed_dirs_are_split_on_the_path_separator(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = from_env(monkeypatch, CI_MCP_ALLOWED_DIRS=os.pathsep.join(["/srv/a", "", " ", "/srv/b c"]))
    assert settings.allowed_dirs == [Path("/srv/a"), Path("/srv/b c")]
    assert from_env(monkeypatch, CI_MCP_ALLOWED_DIRS="").allowed_dirs == []


@pytest.mark.parametrize(
    ("variable", "field"),
    [
        ("CI_MCP_HTTP_TOKENS", "http_tokens"),
        ("CI_MCP_HTTP_ALLOWED_HOSTS", "http_allowed_hosts"),
        ("CI_MCP_OAUTH_REQUIRED_SCOPES", "oauth_required_scopes"),
    ],
)
def test_comma_lists_are_split_trimmed_and_drop_empty_items(
    monkeypatch: pytest.MonkeyPatch, variable: str, field: str
) -> None:
    settings = from_env(monkeypatch, **{variable: " alice:tok1 ,, bob:tok2,"})
    assert getattr(settings, field) == ["alice:tok1", "bob:tok2"]
    assert getattr(from_env(monkeypatch, **{variable: "one"}), field) == ["one"]


def test_lists_given_as_lists_are_kept_as_they_are() -> None:
    settings = Settings(http_tokens=["a,b"], allowed_dirs=[Path("/x:y")])
    assert settings.http_tokens == ["a,b"] and settings.allowed_dirs == [Path("/x:y")]


def test_the_log_level_is_case_insensitive_and_other_values_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    assert from_env(monkeypatch, CI_MCP_LOG_LEVEL="debug").log_level == "DEBUG"
    with pytest.raises(ValueError, match="log_level"):
        from_env(monkeypatch, CI_MCP_LOG_LEVEL="chatty")


@pytest.mark.parametrize(
    "variable", ["CI_MCP_AZURE_ENDPOINT", "AZURE_AI_PROJECT_ENDPOINT", "FOUNDRY_PROJECT_ENDPOINT", "PROJECT_ENDPOINT"]
)
def test_the_azure_endpoint_takes_each_of_its_usual_names(monkeypatch: pytest.MonkeyPatch, variable: str) -> None:
    assert from_env(monkeypatch, **{variable: "https://a.example/api/projects/p"}).azure_endpoint == (
        "https://a.example/api/projects/p"
    )


def test_secrets_stay_out_of_the_repr() -> None:
    settings = Settings(http_tokens=["alice:s3cret"], llm_api_key="sk-s3cret", project_connection_string="s3cret")
    assert "s3cret" not in repr(settings)


def test_defaults_pass_the_checks() -> None:
    Settings().check()


@pytest.mark.parametrize(
    ("values", "words"),
    [
        ({"backend": "azure"}, "CI_MCP_BACKEND=azure needs AZURE_AI_PROJECT_ENDPOINT"),
        ({"backend": "azure-classic"}, "CI_MCP_BACKEND=azure-classic needs AZURE_AI_PROJECT_ENDPOINT"),
        ({"backend": "azure", "project_connection_string": "x;y;z"}, "no longer supported.*AZURE_AI_PROJECT_ENDPOINT"),
        ({"run_timeout_seconds": 0}, "CI_MCP_RUN_TIMEOUT_SECONDS must be > 0"),
        ({"run_timeout_seconds": 100, "max_run_timeout_seconds": 99}, "not above CI_MCP_MAX_RUN_TIMEOUT_SECONDS"),
        ({"kernel_pool_size": -1}, "CI_MCP_KERNEL_POOL_SIZE must be 0 or more"),
        ({"file_retention_days": -0.5}, "CI_MCP_FILE_RETENTION_DAYS must be 0 or more"),
        ({"max_sessions": 0}, "CI_MCP_MAX_SESSIONS must be at least 1"),
        ({"max_store_mb": 0}, "CI_MCP_MAX_STORE_MB must be at least 1"),
    ],
)
def test_each_check_names_the_setting_to_change(values: dict[str, Any], words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        Settings(**values).check()


def test_an_endpoint_satisfies_the_azure_check() -> None:
    Settings(backend="azure", azure_endpoint="https://a.example/api/projects/p").check()


def test_a_runs_time_limit_is_the_default_or_what_was_asked_within_the_maximum() -> None:
    settings = Settings(run_timeout_seconds=30, max_run_timeout_seconds=90)
    assert settings.run_timeout(None) == 30
    assert settings.run_timeout(90) == 90
    with pytest.raises(InvalidInputError, match="timeout_seconds may be at most 90"):
        settings.run_timeout(90.5)
    with pytest.raises(InvalidInputError, match="must be more than 0"):
        settings.run_timeout(0)
