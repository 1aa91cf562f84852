"""Configuration, read once at the edge (`cli.py` builds a `Settings` from the environment and flags).

Everything below `cli.py` takes a `Settings` value; nothing else reads the environment. `Settings(...)` is a plain
model (only what is passed); `Settings.from_env(os.environ, ...)` adds the environment. pydantic-settings is not
used: its import alone was about a tenth of the server's start (issue 12), and these flat fields need none of it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator

from ci_mcp.errors import ConfigError

MB = 1024 * 1024


def default_data_dir() -> Path:
    from platformdirs import user_data_dir

    return Path(user_data_dir("ci-mcp", appauthor=False))


ENV_PREFIX = "CI_MCP_"


class Settings(BaseModel):
    """Every setting has a `CI_MCP_*` environment variable (Azure ones also take their usual Azure names)."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True, frozen=True)

    backend: Literal["local", "azure", "azure-classic"] = "local"
    data_dir: Path = Field(default_factory=default_data_dir)
    allowed_dirs: list[Path] = Field(default_factory=list)
    """Roots for upload paths and save_to when the client offers no MCP roots. Empty: the server's cwd."""

    max_upload_bytes: int = 512 * MB
    max_inline_upload_bytes: int = 20 * MB
    max_store_mb: int = 8192
    """Total size of the file store (uploads and generated files, identical content counted once)."""
    run_timeout_seconds: float = 120.0
    max_run_timeout_seconds: float = 900.0
    idle_session_seconds: float = 1800.0
    max_sessions: int = 8
    text_output_limit: int = 20_000
    inline_image_bytes: int = 700_000
    """An image block larger than this is shrunk for the result; the original stays fetchable."""
    inline_text_fetch_bytes: int = 100_000
    file_retention_days: float | None = None
    """Files older than this many days (and closed sessions' workspaces) are removed when the server starts and by
    `ci-mcp files prune`; unset keeps everything."""
    """fetch_generated_file returns text files up to this size inline; larger ones as a resource or save_to."""
    max_image_pixels: int = 25_000_000
    """Pictures declaring more pixels (read from the header, never decoded) get no preview; they stay files."""
    max_display_bytes: int = 16 * MB
    """Largest single display payload (figure, SVG, HTML, JSON) kept from a run, and largest picture previewed."""
    max_display_bytes_per_run: int = 64 * MB
    """All pictures and SVG one run displays, plus the picture files read for its previews, together."""

    # local backend
    kernel_pool_size: int | None = None
    """Kernels started ahead, so a new session does not wait for one. Unset: 3 where kernels are forked by the
    zygote (a spare costs about 30 MB of its own), 1 where each starts cold (about 100 MB)."""
    kernel_preload: bool = True
    """Pre-import numpy, pandas and matplotlib in kernels before they are handed out (in the zygote, before it forks
    any; else in each pooled kernel). Off: a kernel imports them when the code does."""
    kernel_zygote: bool = True
    """With bwrap: fork each kernel from one preloaded, sandboxed zygote process (milliseconds) instead of starting
    a Python per kernel (about a second). Each fork is isolated as a bwrap-started kernel is; where this machine
    cannot (for example no nested user namespaces), kernels start cold and the log says why."""
    sandbox: Literal["auto", "bwrap", "seatbelt", "none"] = "auto"
    memory_limit_mb: int = 2048
    cpu_time_limit_seconds: int = 3600
    max_processes: int = 256
    max_file_size_mb: int = 1024
    max_session_dir_mb: int = 2048
    kernel_python: str | None = None
    """Python executable for kernels (must have IPython and matplotlib-inline, as a venv with ipykernel has). Default:
    the server's own interpreter."""

    # natural-language requests on the local backend (OpenAI-compatible endpoint)
    llm_base_url: str | None = None
    llm_model: str | None = None
    llm_api_key: str | None = Field(default=None, repr=False)

    # azure backends
    azure_endpoint: str | None = Field(
        default=None,
        validation_alias=AliasChoices(
            "CI_MCP_AZURE_ENDPOINT", "AZURE_AI_PROJECT_ENDPOINT", "FOUNDRY_PROJECT_ENDPOINT", "PROJECT_ENDPOINT"
        ),
    )
    azure_model: str = Field(
        default="gpt-4.1",
        validation_alias=AliasChoices("CI_MCP_AZURE_MODEL", "AZURE_AI_MODEL_DEPLOYMENT_NAME", "MODEL_DEPLOYMENT_NAME"),
    )
    azure_agent_name: str = "ci-mcp-code-interpreter"
    azure_instructions: str = (
        "You are a data analyst. Use the code interpreter to answer with Python. Files the user attached are in "
        "/mnt/data. Save every chart as a PNG file and describe the result briefly."
    )
    azure_max_retries: int = 4
    """Retries of one Azure request on 429/5xx/connection errors (Retry-After honoured), then a transient error."""
    azure_max_retry_wait_seconds: float = 30.0
    """Longest single wait for a Retry-After; a longer one is returned to the caller as a transient error."""
    azure_ca_bundle: Path | None = None
    """A PEM bundle to trust for Azure endpoints (a TLS-inspecting proxy's CA); default: the system store."""
    project_connection_string: str | None = Field(
        default=None, repr=False, validation_alias=AliasChoices("PROJECT_CONNECTION_STRING")
    )

    # transport
    transport: Literal["stdio", "http"] = "stdio"
    host: str = "127.0.0.1"
    port: int = 8765
    http_tokens: list[str] = Field(default_factory=list, repr=False)
    """Bearer tokens accepted over HTTP, comma-separated; `name:token` names the principal (default: a hash)."""
    http_token_file: Path | None = None
    """A file with one bearer token per line (`name:token` or `token`; `#` comments), read at start."""
    http_allowed_hosts: list[str] = Field(default_factory=list)
    """Host names (`name` or `name:port`) clients use to reach the server, besides the loopback names."""
    public_url: str | None = None
    """The URL clients use for this server (e.g. https://ci.example.com/mcp): its host is allowed, and it is the
    OAuth resource identifier."""
    oauth_issuer: str | None = None
    """OAuth resource-server mode: accept JWTs from this issuer (e.g. https://login.microsoftonline.com/<tenant>/v2.0)."""
    oauth_audience: str | None = None
    """The `aud` the JWTs must carry (for Entra ID: the application id URI or client id of this server's app)."""
    oauth_jwks_url: str | None = None
    """Where the issuer's signing keys are (default: read from the issuer's OpenID configuration)."""
    oauth_required_scopes: list[str] = Field(default_factory=list)
    max_sessions_per_principal: int = 4
    """Live sessions one HTTP principal may hold; past it, the call is refused until one is closed or reaped."""
    http_session_idle_seconds: float = 1800.0
    """An MCP HTTP session no request touched for this long is ended."""
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "WARNING"

    @classmethod
    def from_env(cls, environ: Mapping[str, str], **overrides: Any) -> Settings:
        """The settings from `environ` (names case-insensitive, as the shell's `CI_MCP_*` and the Azure names),
        with `overrides` (command-line flags) taking precedence. Values are strings; the fields' validators parse
        them (lists are comma- or path-separated, never JSON)."""
        lowered = {key.lower(): value for key, value in environ.items()}
        values: dict[str, Any] = {}
        for name, field in cls.model_fields.items():
            alias = field.validation_alias
            names = (
                [str(choice) for choice in alias.choices]
                if isinstance(alias, AliasChoices)
                else [alias]
                if isinstance(alias, str)
                else [ENV_PREFIX + name]
            )
            for env_name in names:
                if env_name.lower() in lowered:
                    values[name] = lowered[env_name.lower()]
                    break
        return cls(**(values | overrides))

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("http_tokens", "http_allowed_hosts", "oauth_required_scopes", mode="before")
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return [p.strip() for p in value.split(",") if p.strip()]
        return value

    @field_validator("allowed_dirs", mode="before")
    @classmethod
    def _split_dirs(cls, value: object) -> object:
        if isinstance(value, str):
            import os

            return [p for p in value.split(os.pathsep) if p.strip()]
        return value

    def run_timeout(self, asked: float | None) -> float:
        """The time limit of one run: the default, or what the caller asked within the configured maximum."""
        from ci_mcp.errors import InvalidInputError

        if asked is None:
            return self.run_timeout_seconds
        if asked <= 0:
            raise InvalidInputError("timeout_seconds must be more than 0.")
        if asked > self.max_run_timeout_seconds:
            raise InvalidInputError(f"timeout_seconds may be at most {self.max_run_timeout_seconds:g} on this server.")
        return asked

    def check(self) -> None:
        """Cross-field checks; raises ConfigError naming the setting to change."""
        if self.backend in ("azure", "azure-classic") and not self.azure_endpoint:
            if self.project_connection_string:
                raise ConfigError(
                    "PROJECT_CONNECTION_STRING (the 2024 hub format) is no longer supported by any Azure AI SDK. "
                    "Set AZURE_AI_PROJECT_ENDPOINT to your project endpoint instead: "
                    "https://<account>.services.ai.azure.com/api/projects/<project>"
                )
            raise ConfigError(
                f"CI_MCP_BACKEND={self.backend} needs AZURE_AI_PROJECT_ENDPOINT "
                "(https://<account>.services.ai.azure.com/api/projects/<project>)."
            )
        if self.run_timeout_seconds <= 0 or self.max_run_timeout_seconds < self.run_timeout_seconds:
            raise ConfigError("CI_MCP_RUN_TIMEOUT_SECONDS must be > 0 and not above CI_MCP_MAX_RUN_TIMEOUT_SECONDS.")
        if self.kernel_pool_size is not None and self.kernel_pool_size < 0:
            raise ConfigError("CI_MCP_KERNEL_POOL_SIZE must be 0 or more.")
        if self.file_retention_days is not None and self.file_retention_days < 0:
            raise ConfigError("CI_MCP_FILE_RETENTION_DAYS must be 0 or more (unset keeps files forever).")
        if self.max_sessions < 1:
            raise ConfigError("CI_MCP_MAX_SESSIONS must be at least 1.")
        if self.max_store_mb < 1:
            raise ConfigError("CI_MCP_MAX_STORE_MB must be at least 1.")
