"""Command line: `ci-mcp` (serve over stdio), `ci-mcp serve`, `ci-mcp run`, `ci-mcp doctor`.

The only module that reads the environment: it builds `Settings` once (environment plus flags) and passes them
down. Configuration errors print one line naming the setting and exit with code 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ci_mcp import __version__
from ci_mcp.errors import CiMcpError, ConfigError, InvalidInputError

if TYPE_CHECKING:
    from ci_mcp.faststart import CacheFile, Responder, Wire
    from ci_mcp.http import HttpPlan
    from ci_mcp.settings import Settings

# `ci-mcp --version` and `--help` import only this module and argparse: anyio, pydantic(-settings), the MCP SDK and
# the backends are imported where a command needs them (tests/local/test_version.py).


def _global_flags(parser: argparse.ArgumentParser, default: Any) -> None:
    """The flags accepted before and after the subcommand (`ci-mcp --backend azure doctor` and
    `ci-mcp doctor --backend azure`); on subcommands the default is SUPPRESS, so they do not undo the earlier one."""
    parser.add_argument(
        "--backend", choices=["local", "azure", "azure-classic"], default=default, help="(CI_MCP_BACKEND)"
    )
    parser.add_argument(
        "--data-dir", type=Path, default=default, help="where files and metadata are kept (CI_MCP_DATA_DIR)"
    )
    parser.add_argument(
        "--sandbox", choices=["auto", "bwrap", "seatbelt", "none"], default=default, help="(CI_MCP_SANDBOX)"
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ci-mcp", description="Code-interpreter MCP server.")
    parser.add_argument("--version", action="version", version=f"ci-mcp {__version__}")
    _global_flags(parser, None)
    sub = parser.add_subparsers(dest="command")
    serve = sub.add_parser("serve", help="serve MCP (default: stdio)")
    serve.add_argument("--transport", choices=["stdio", "http"], help="(CI_MCP_TRANSPORT)")
    serve.add_argument("--host", help="HTTP host (CI_MCP_HOST, default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="HTTP port (CI_MCP_PORT, default 8765)")
    run = sub.add_parser("run", help="run one analysis from the terminal and write its outputs to a folder")
    run.add_argument("files", nargs="*", type=Path, help="files to upload first")
    group = run.add_mutually_exclusive_group(required=True)
    group.add_argument("--code", help="Python code to run")
    group.add_argument("--code-file", type=Path, help="a .py file to run")
    group.add_argument("--request", help="a natural-language request (Azure backends, or a configured model)")
    run.add_argument("--out", type=Path, default=Path("ci-mcp-output"), help="output folder")
    run.add_argument("--timeout", type=float, help="time limit in seconds")
    doctor = sub.add_parser("doctor", help="check the configuration and the backend, in plain words")
    files = sub.add_parser("files", help="housekeeping of the stored files").add_subparsers(dest="files_command")
    prune = files.add_parser("prune", help="remove old files and finished sessions' workspaces")
    prune.add_argument("--older-than", type=float, metavar="DAYS", help="default: CI_MCP_FILE_RETENTION_DAYS")
    prune.add_argument("--dry-run", action="store_true", help="list what would be removed; remove nothing")
    _global_flags(prune, argparse.SUPPRESS)
    for subparser in (serve, run, doctor):
        _global_flags(subparser, argparse.SUPPRESS)
    for subparser in (serve, doctor):  # one flag, many values: what an MCP bundle's folder picker expands to
        subparser.add_argument(
            "--allowed-dirs",
            nargs="+",
            type=Path,
            help="directories for upload paths and save_to (CI_MCP_ALLOWED_DIRS)",
        )
    return parser


def load_settings(args: argparse.Namespace) -> Settings:
    from pydantic import ValidationError

    from ci_mcp.settings import Settings

    overrides: dict[str, Any] = {}
    for key in ("backend", "data_dir", "sandbox", "transport", "host", "port", "allowed_dirs"):
        value = getattr(args, key, None)
        if value is not None:
            overrides[key] = value
    try:
        settings = Settings.from_env(os.environ, **overrides)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = str(first["loc"][0]) if first["loc"] else "?"
        raise ConfigError(f"CI_MCP_{field.upper()}: {first['msg']}") from None
    settings.check()
    return settings


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    command = args.command or "serve"
    # Serving stdio: the first answers come from the start cache while the rest is imported (faststart.py).
    start = _FastStart.begin(args) if command == "serve" and _serves_stdio(args) else None
    import logging

    import anyio

    try:
        settings = load_settings(args)
        logging.basicConfig(level=settings.log_level, stream=sys.stderr, format="ci-mcp %(levelname)s %(message)s")
        if command == "serve":
            return _serve(settings, start)
        if command == "run":
            from ci_mcp.terminal import run_once

            code = _read_code(args.code_file) if args.code_file else args.code
            return anyio.run(run_once, settings, list(args.files), code, args.request, args.out, args.timeout)
        if command == "files":
            from ci_mcp.housekeeping import files_prune

            if args.files_command != "prune":
                raise ConfigError("usage: ci-mcp files prune [--older-than DAYS] [--dry-run]")
            return files_prune(settings, args.older_than, dry_run=args.dry_run)
        if command == "doctor":
            from ci_mcp.doctor import doctor

            return anyio.run(doctor, settings)
    except ConfigError as exc:
        print(f"ci-mcp: configuration error: {exc}", file=sys.stderr)
        return 2
    except CiMcpError as exc:
        from ci_mcp.terminal import cli_words

        print(f"ci-mcp: {cli_words(str(exc))}", file=sys.stderr)
        return 1
    except PortInUseError as exc:
        print(f"ci-mcp: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        if start is not None:
            start.close()
    return 0


class PortInUseError(Exception):
    pass


def _read_code(path: Path) -> str:
    try:
        return path.read_text()
    except OSError as exc:
        raise InvalidInputError(f"--code-file {path}: {exc.strerror or exc}") from None


def _check_port(host: str, port: int) -> None:
    """Bind once before serving, so a port in use is one line instead of uvicorn's traceback."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise PortInUseError(f"cannot serve on {host}:{port}: {exc}") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            raise PortInUseError(
                f"cannot serve on {host}:{port}: {exc.strerror or exc}; choose another with --port (CI_MCP_PORT)"
            ) from None


def _serve(settings: Settings, start: _FastStart | None) -> int:
    if settings.transport == "http":
        return _serve_http(settings)
    if start is None:  # no descriptors to claim (Windows): the SDK's own transport
        _build_server(settings).run("stdio")
        return 0
    import anyio

    from ci_mcp.faststart import CACHE_NAME

    server = _build_server(settings)
    handed = start.responder.stop() if start.responder is not None else None
    start.responder = None
    # The cache is written where this start looked for it, and only if that is the configured data directory.
    cache = start.cache if start.cache.path == settings.data_dir / CACHE_NAME else None
    from ci_mcp.stdio import serve_stdio

    anyio.run(serve_stdio, server, start.wire, handed, cache)
    return 0


# What `Settings.from_env` reads besides the CI_MCP_* names (tests/local/test_start_cache.py keeps this in step),
# and what else shapes the tool descriptions: PATH (the sandbox and the kernel's Python are found on it) and where
# the data directory is by default.
SETTINGS_ALIASES = (
    "AZURE_AI_PROJECT_ENDPOINT",
    "FOUNDRY_PROJECT_ENDPOINT",
    "PROJECT_ENDPOINT",
    "AZURE_AI_MODEL_DEPLOYMENT_NAME",
    "MODEL_DEPLOYMENT_NAME",
    "PROJECT_CONNECTION_STRING",
)
DESCRIPTION_INPUTS = ("PATH", "HOME", "XDG_DATA_HOME")
SECRET_WORDS = ("KEY", "TOKEN", "SECRET", "PASSWORD", "CONNECTION_STRING")


def _env(name: str) -> str | None:
    """An environment value as `Settings.from_env` reads it (names case-insensitive; of two spellings, the last)."""
    return {key.lower(): value for key, value in os.environ.items()}.get(name.lower())


def _serves_stdio(args: argparse.Namespace) -> bool:
    transport = getattr(args, "transport", None) or _env("CI_MCP_TRANSPORT") or "stdio"
    return transport == "stdio" and sys.platform != "win32"


def settings_inputs(args: argparse.Namespace) -> dict[str, Any]:
    """Everything the settings (and so the tool list, descriptions and instructions) are made of, for the start
    cache's key: the flags and the environment values `Settings.from_env` reads; secrets only as set or not."""
    names = {key.upper() for key in os.environ if key.upper().startswith("CI_MCP_")}
    names.update(SETTINGS_ALIASES + DESCRIPTION_INPUTS)
    env: dict[str, str | bool] = {}
    for name in sorted(names):
        value = _env(name)
        if value is not None:
            env[name] = True if any(word in name for word in SECRET_WORDS) else value
    flags = {k: str(v) for k, v in sorted(vars(args).items()) if v is not None}
    return {"env": env, "flags": flags}


class _FastStart:
    """The stdio wire, claimed at once, and the cache responder when this configuration's cache is there."""

    def __init__(self, wire: Wire, cache: CacheFile, responder: Responder | None) -> None:
        self.wire, self.cache, self.responder = wire, cache, responder

    @classmethod
    def begin(cls, args: argparse.Namespace) -> _FastStart:
        from ci_mcp.faststart import CACHE_NAME, CacheFile, Responder, Wire, cache_key

        wire = Wire.claim()
        data_dir = args.data_dir or _env("CI_MCP_DATA_DIR")
        if data_dir is None:
            from platformdirs import user_data_dir  # as settings.default_data_dir

            data_dir = user_data_dir("ci-mcp", appauthor=False)
        cache = CacheFile(Path(data_dir) / CACHE_NAME, cache_key(settings_inputs(args)))
        answers = cache.load()
        trace = (_env("CI_MCP_LOG_LEVEL") or "").upper() == "DEBUG"
        return cls(wire, cache, Responder(wire, answers, trace).start() if answers is not None else None)

    def close(self) -> None:
        if self.responder is not None:
            self.responder.stop()
            self.responder = None
        self.wire.release()


def _build_server(settings: Settings, plan: HttpPlan | None = None) -> Any:
    """The MCP server on the configured backend and store (pruned first when a retention is set)."""
    from ci_mcp.backends.factory import create_backend
    from ci_mcp.housekeeping import prune_on_start
    from ci_mcp.store import open_store

    store = open_store(settings)
    prune_on_start(store, settings)
    # The backend first: its probes (the sandbox, the kernel's Python) run while the MCP SDK is imported.
    backend = create_backend(settings, store)
    from ci_mcp.server import create_server

    return create_server(backend, store, settings, plan)


def http_app(settings: Settings, plan: HttpPlan) -> Any:
    """The streamable HTTP app (a Starlette app) for `plan` (from `http.plan_http`)."""
    return _build_server(settings, plan).streamable_http_app(
        max_request_body_size=plan.max_body_bytes,
        transport_security=plan.security,
        session_idle_timeout=settings.http_session_idle_seconds,
        host=settings.host,
    )


def _serve_http(settings: Settings) -> int:
    import anyio
    import uvicorn

    from ci_mcp.http import plan_http

    plan = plan_http(settings)  # a refused configuration says so before anything listens
    _check_port(settings.host, settings.port)
    app = http_app(settings, plan)

    class Server(uvicorn.Server):
        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets)
            if self.started:  # listening, and the backend is up: the line means "connect now"
                print(f"ci-mcp: serving MCP at {plan.url} (auth: {plan.auth_mode})", file=sys.stderr, flush=True)

    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level=settings.log_level.lower())
    anyio.run(Server(config).serve)
    return 0
