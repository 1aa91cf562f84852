"""The HTTP face: who may call (bearer tokens or OAuth JWTs), which Host/Origin headers are accepted, how large a
request may be. `server.py` builds the tools; this module decides how they are reached over streamable HTTP.

Rules: the allowed hosts and origins are always set (the loopback names, plus the configured public names); a
bind to anything but loopback without authentication refuses to start; tokens are compared in constant time and
never logged; the request body limit fits the advertised inline upload.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio
from mcp.server.auth.provider import AccessToken
from mcp.server.auth.settings import AuthSettings
from mcp.server.transport_security import TransportSecuritySettings

from ci_mcp.errors import ConfigError
from ci_mcp.settings import Settings

log = logging.getLogger(__name__)

LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")
BODY_OVERHEAD = 1024 * 1024
"""Room in a request body beyond the base64 of the largest inline upload (JSON-RPC envelope, other arguments)."""


@dataclass(frozen=True)
class HttpPlan:
    """Everything `cli.py` needs to serve over HTTP, decided before anything listens."""

    url: str
    auth_mode: str
    security: TransportSecuritySettings
    max_body_bytes: int
    auth: AuthSettings | None = None
    verifier: Any = None


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def _has_port(name: str) -> bool:
    if name.startswith("["):
        return "]:" in name
    return name.count(":") == 1


def max_body_bytes(settings: Settings) -> int:
    """The largest request body: an inline upload of `max_inline_upload_bytes` is base64 (4/3) plus the envelope."""
    return (settings.max_inline_upload_bytes + 2) // 3 * 4 + BODY_OVERHEAD


def transport_security(settings: Settings) -> TransportSecuritySettings:
    """Host and Origin checks on every bind: the loopback names, the bound address, the public names."""
    hosts = ["127.0.0.1:*", "localhost:*", "[::1]:*"]
    origins = ["http://127.0.0.1:*", "http://localhost:*", "http://[::1]:*"]
    names: list[str] = []
    if settings.host not in ("0.0.0.0", "::", "") and not is_loopback(settings.host):
        names.append(_url_host(settings.host))
    elif is_loopback(settings.host) and settings.host not in LOOPBACK_NAMES:
        names.append(_url_host(settings.host))  # e.g. 127.0.0.2: loopback, but not a name the SDK knows
    names.extend(settings.http_allowed_hosts)
    if settings.public_url:
        parts = urlsplit(settings.public_url)
        if parts.hostname:
            names.append(parts.netloc if parts.port else _url_host(parts.hostname))
    for name in dict.fromkeys(names):
        if _has_port(name):
            hosts.append(name)
            origins.extend(f"{scheme}://{name}" for scheme in ("http", "https"))
        else:  # any port, and none (a Host header on 80/443 carries no port)
            hosts.extend([name, f"{name}:*"])
            origins.extend(f"{scheme}://{name}{port}" for scheme in ("http", "https") for port in ("", ":*"))
    return TransportSecuritySettings(enable_dns_rebinding_protection=True, allowed_hosts=hosts, allowed_origins=origins)


# -- bearer tokens ---------------------------------------------------------------------------------------------


def _principal_of(token: str) -> str:
    return "token-" + hashlib.sha256(token.encode()).hexdigest()[:12]


def parse_tokens(entries: list[str], source: str) -> dict[str, str]:
    """`name:token` or `token` entries -> {token: principal}. Short tokens are refused (they can be guessed)."""
    tokens: dict[str, str] = {}
    for number, raw in enumerate(entries, 1):
        entry = raw.strip()
        if not entry or entry.startswith("#"):
            continue
        name, sep, token = entry.partition(":")
        if not sep:
            name, token = "", entry
        name, token = name.strip(), token.strip()
        if len(token) < 16:
            raise ConfigError(
                f"{source}: token {number} is shorter than 16 characters; use a random one "
                '(e.g. `python -c "import secrets; print(secrets.token_urlsafe(32))"`).'
            )
        tokens[token] = name or _principal_of(token)
    return tokens


def load_tokens(settings: Settings) -> dict[str, str]:
    tokens = parse_tokens(settings.http_tokens, "CI_MCP_HTTP_TOKENS")
    if settings.http_token_file is not None:
        path: Path = settings.http_token_file
        try:
            lines = path.read_text().splitlines()
        except OSError as exc:
            raise ConfigError(f"CI_MCP_HTTP_TOKEN_FILE {path}: {exc.strerror or exc}") from None
        tokens.update(parse_tokens(lines, f"CI_MCP_HTTP_TOKEN_FILE {path}"))
    return tokens


class StaticTokenVerifier:
    """Accepts the configured bearer tokens. Every known token is compared (constant time, no early exit)."""

    def __init__(self, tokens: dict[str, str]) -> None:
        self._tokens = [(t.encode(), p) for t, p in tokens.items()]

    async def verify_token(self, token: str) -> AccessToken | None:
        given = token.encode()
        found: str | None = None
        for known, principal in self._tokens:
            if hmac.compare_digest(known, given):
                found = principal
        if found is None:
            return None
        return AccessToken(token=token, client_id=found, scopes=[], subject=found)


# -- OAuth resource server -------------------------------------------------------------------------------------


class JwtVerifier:
    """Validates JWT access tokens from one issuer for one audience (Microsoft Entra ID, or any OIDC issuer):
    signature by the issuer's published keys, `iss`, `aud`, `exp` and `nbf`, and the required scopes."""

    ALGORITHMS = ["RS256", "RS384", "RS512", "PS256", "ES256", "ES384"]

    def __init__(self, issuer: str, audience: str, jwks_url: str | None, required_scopes: list[str]) -> None:
        self.issuer = issuer
        self.audience = audience
        self.required_scopes = required_scopes
        self._jwks_url = jwks_url
        self._client: Any = None

    def _keys(self) -> Any:
        import jwt

        if self._client is None:
            url = self._jwks_url or _discover_jwks(self.issuer)
            self._client = jwt.PyJWKClient(url, cache_keys=True, lifespan=3600, timeout=10)
        return self._client

    def _verify(self, token: str) -> AccessToken | None:
        import jwt

        try:
            key = self._keys().get_signing_key_from_jwt(token)
            claims: dict[str, Any] = jwt.decode(
                token,
                key.key,
                algorithms=self.ALGORITHMS,
                audience=self.audience,
                issuer=self.issuer,
                options={"require": ["exp", "iss", "aud"]},
                leeway=30,
            )
        except (jwt.PyJWTError, OSError, ValueError) as exc:
            log.info("ci-mcp http: a bearer token was refused (%s)", type(exc).__name__)
            return None
        scopes = str(claims.get("scp", "")).split() or [str(r) for r in claims.get("roles", [])]
        if any(s not in scopes for s in self.required_scopes):
            log.info("ci-mcp http: a bearer token lacked a required scope")
            return None
        client = str(claims.get("azp") or claims.get("appid") or claims.get("client_id") or "unknown-client")
        subject = claims.get("oid") or claims.get("sub")
        return AccessToken(
            token=token,
            client_id=client,
            scopes=scopes,
            expires_at=int(claims["exp"]),
            subject=str(subject) if subject else None,
            claims={"iss": claims["iss"]},
            resource=self.audience,
        )

    async def verify_token(self, token: str) -> AccessToken | None:
        return await anyio.to_thread.run_sync(self._verify, token)


def _discover_jwks(issuer: str) -> str:
    import json
    import urllib.request

    url = issuer.rstrip("/") + "/.well-known/openid-configuration"
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - the operator's configured issuer
        return str(json.load(response)["jwks_uri"])


def principal_of(token: AccessToken | None) -> str | None:
    """The owner of what a request creates: issuer + subject (or client) of its token; None without auth."""
    if token is None:
        return None
    issuer = (token.claims or {}).get("iss") or ""
    return f"{issuer}|{token.subject or token.client_id}"


# -- the plan --------------------------------------------------------------------------------------------------


def plan_http(settings: Settings) -> HttpPlan:
    """Decide auth, allowed hosts and the body limit; refuse an unauthenticated non-loopback bind."""
    url = f"http://{_url_host(settings.host)}:{settings.port}/mcp"
    security = transport_security(settings)
    body = max_body_bytes(settings)
    tokens = load_tokens(settings)
    if settings.oauth_issuer or settings.oauth_audience:
        if not (settings.oauth_issuer and settings.oauth_audience and settings.public_url):
            raise ConfigError(
                "OAuth mode needs CI_MCP_OAUTH_ISSUER, CI_MCP_OAUTH_AUDIENCE and CI_MCP_PUBLIC_URL (the URL clients "
                "use for this server, e.g. https://ci.example.com/mcp)."
            )
        if tokens:
            raise ConfigError("Use either bearer tokens (CI_MCP_HTTP_TOKENS/_FILE) or OAuth (CI_MCP_OAUTH_*).")
        verifier = JwtVerifier(
            settings.oauth_issuer,
            settings.oauth_audience,
            settings.oauth_jwks_url,
            settings.oauth_required_scopes,
        )
        auth = AuthSettings(
            issuer_url=settings.oauth_issuer,  # type: ignore[arg-type]
            resource_server_url=settings.public_url,  # type: ignore[arg-type]
            required_scopes=settings.oauth_required_scopes or None,
            validate_token_resource=False,  # the verifier checks `aud` itself
        )
        return HttpPlan(url, f"OAuth JWTs from {settings.oauth_issuer}", security, body, auth, verifier)
    if tokens:
        auth = AuthSettings(issuer_url=settings.public_url or url, resource_server_url=None)  # type: ignore[arg-type]
        mode = f"bearer tokens ({len(tokens)} configured)"
        return HttpPlan(url, mode, security, body, auth, StaticTokenVerifier(tokens))
    if not is_loopback(settings.host):
        raise ConfigError(
            f"Refusing to serve on {settings.host} without authentication: anyone who reaches the port could run "
            "code and read every file. Set CI_MCP_HTTP_TOKENS (or CI_MCP_HTTP_TOKEN_FILE) to a random token, e.g. "
            '`export CI_MCP_HTTP_TOKENS=$(python -c "import secrets; print(secrets.token_urlsafe(32))")`, and '
            "send it as `Authorization: Bearer <token>`; or bind to 127.0.0.1."
        )
    return HttpPlan(url, "none (loopback only; set CI_MCP_HTTP_TOKENS to require a token)", security, body)
