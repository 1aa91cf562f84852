"""Which host paths the server may read (upload_file) and write (fetch_generated_file save_to).

Allowed roots are CI_MCP_ALLOWED_DIRS, else the server's working directory unless that is `/` or the home
directory itself (desktop clients often start servers there; neither is ever an implicit root). A client's MCP
roots narrow that set and never widen it: the effective roots are the intersection. Paths are resolved
(symlinks and '..') before the check; secret locations and special files are refused; existing files are not
overwritten unless asked.
"""

from __future__ import annotations

import os
import re
import secrets
import stat
from collections.abc import Sequence
from pathlib import Path

from ci_mcp.errors import InvalidInputError, NotFoundError, PathNotAllowedError

SECRET_PARTS = (".ssh", ".aws", ".azure", ".gnupg", ".kube", ".docker", ".netrc", ".git-credentials")
SECRET_PAIRS = ((".config", "gcloud"),)


_UNSAFE = re.compile(r"[^A-Za-z0-9._ -]+")


def safe_name(name: str) -> str:
    """A file name that is safe on any host disk: no directories, no control or shell-special characters."""
    base = os.path.basename(name.replace("\\", "/")).strip()
    base = _UNSAFE.sub("_", base).strip(" .")
    return base[:200] or "file"


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]+")
_NAME_MAX_BYTES = 255  # one path component on Linux file systems
RESERVED_PREFIX = ".ci-mcp-"  # the server's own temporaries in a session directory


def workspace_name(name: str) -> str:
    """The name a file gets in a session directory: the given name, changed only where it must be: the part after
    the last separator, control characters as '_', at most 255 UTF-8 bytes (the extension kept), never '.', '..',
    empty or the server's own temporary prefix. Non-ASCII letters, spaces and punctuation are kept."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    base = base.encode("utf-8", errors="replace").decode("utf-8")  # lone surrogates from a client
    base = _CONTROL.sub("_", base).strip()
    if base in ("", ".", ".."):
        return "file"
    if base.startswith(RESERVED_PREFIX):
        base = "_" + base[1:]
    if len(base.encode()) > _NAME_MAX_BYTES:
        stem, dot, ext = base.rpartition(".")
        suffix = dot + ext if dot and stem and len(ext.encode()) <= 16 else ""
        stem = base[: len(base) - len(suffix)]
        room = _NAME_MAX_BYTES - len(suffix.encode())
        stem = stem.encode()[:room].decode("utf-8", errors="ignore")
        base = stem + suffix
    return base


def _is_secret(path: Path) -> bool:
    parts = path.parts
    if any(p in SECRET_PARTS for p in parts):
        return True
    if any(parts[i : i + 2] == pair for pair in SECRET_PAIRS for i in range(len(parts) - 1)):
        return True
    name = path.name
    return name == ".env" or name.startswith(".env.") or name.endswith(".pem") or name.endswith(".key")


class Roots(list[Path]):
    """The effective allowed roots; when empty, `reason` says why, for the error the caller sees."""

    reason: str = ""


def effective_roots(configured: Sequence[Path], client: Sequence[Path] | None, cwd: Path, home: Path) -> Roots:
    """Configured roots (or the working directory, unless it is `/` or the home directory), narrowed by the
    client's roots when it declares any."""
    if configured:
        base = [Path(p).expanduser().resolve() for p in configured]
        base_reason = "CI_MCP_ALLOWED_DIRS"
    else:
        cwd, home = cwd.resolve(), home.resolve()
        base = [] if cwd in (Path(cwd.anchor), home) else [cwd]
        base_reason = ""
        if not base:
            roots = Roots()
            roots.reason = (
                f"No directory is open to this server: CI_MCP_ALLOWED_DIRS is not set and the working directory "
                f"({cwd}) is {'the file-system root' if cwd == Path(cwd.anchor) else 'the home directory'}, which "
                "is never used implicitly. Ask the operator to set CI_MCP_ALLOWED_DIRS to the folders with the "
                "data, or send the bytes as content_base64."
            )
            return roots
    if client is None:
        return Roots(base)
    narrowed: list[Path] = []
    for c in client:
        for b in base:
            inner = c if _inside(c, [b]) else b if _inside(b, [c]) else None
            if inner is not None and inner not in narrowed:
                narrowed.append(inner)
    roots = Roots(narrowed)
    if not narrowed:
        roots.reason = (
            f"The client's roots ({_roots_text(client)}) do not overlap the directories this server allows "
            f"({_roots_text(base)}{', from ' + base_reason if base_reason else ', the working directory'}); client "
            "roots can only narrow them. Ask the operator to add the folder to CI_MCP_ALLOWED_DIRS, or send the "
            "bytes as content_base64."
        )
    return roots


def _no_roots(roots: Sequence[Path]) -> None:
    if not roots:
        raise PathNotAllowedError(getattr(roots, "reason", "") or "No directory is open to this server.")


def _roots_text(roots: Sequence[Path]) -> str:
    return ", ".join(str(r) for r in roots) or "(none)"


def _inside(path: Path, roots: Sequence[Path]) -> bool:
    return any(path == root or path.is_relative_to(root) for root in roots)


def resolve_readable(raw: str, roots: Sequence[Path]) -> Path:
    """The real path of a regular file inside the roots, or a clear error."""
    if not raw.strip():
        raise InvalidInputError("`path` is empty; pass the absolute path of a file.")
    _no_roots(roots)
    candidate = Path(os.path.expanduser(raw))
    if not candidate.is_absolute():
        candidate = (roots[0] if roots else Path.cwd()) / candidate
    try:
        real = candidate.resolve(strict=True)
    except FileNotFoundError:
        raise NotFoundError(f"No file at '{raw}'. Check the path, or send the bytes as content_base64.") from None
    except (OSError, RuntimeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise InvalidInputError(f"Cannot resolve '{raw}': {reason}.") from None
    if not _inside(real, roots):
        raise PathNotAllowedError(
            f"'{raw}' is outside the directories this server may read ({_roots_text(roots)}). Move the file "
            "there, send it as content_base64, or ask the operator to add its directory to CI_MCP_ALLOWED_DIRS."
        )
    if _is_secret(real):
        raise PathNotAllowedError(f"'{raw}' is in a location that holds secrets; it will not be uploaded.")
    mode = real.stat().st_mode
    if stat.S_ISDIR(mode):
        raise InvalidInputError(f"'{raw}' is a directory; upload the files in it one by one (or a zip of them).")
    if not stat.S_ISREG(mode):
        raise PathNotAllowedError(f"'{raw}' is not a regular file (device, FIFO or socket); it will not be read.")
    return real


def resolve_writable(raw: str, filename: str, roots: Sequence[Path], overwrite: bool) -> Path:
    """Where to write a fetched file: `raw` itself, or `raw/filename` when `raw` is a directory."""
    if not raw.strip():
        raise InvalidInputError("`save_to` is empty; pass an absolute file or directory path.")
    _no_roots(roots)
    candidate = Path(os.path.expanduser(raw))
    if not candidate.is_absolute():
        candidate = (roots[0] if roots else Path.cwd()) / candidate
    if candidate.is_dir():
        candidate = candidate / filename
    parent = candidate.parent
    try:
        real_parent = parent.resolve(strict=True)
    except FileNotFoundError:
        raise NotFoundError(f"The directory '{parent}' does not exist; create it or choose another.") from None
    target = real_parent / candidate.name
    if not _inside(target, roots):
        raise PathNotAllowedError(
            f"'{raw}' is outside the directories this server may write ({_roots_text(roots)}). "
            "Choose a path inside them."
        )
    if _is_secret(target):
        raise PathNotAllowedError(f"'{raw}' is in a location that holds secrets; nothing will be written there.")
    if target.is_symlink():
        raise PathNotAllowedError(f"'{target}' is a symbolic link; choose another name.")
    if target.exists():
        if not target.is_file():
            raise PathNotAllowedError(f"'{target}' exists and is not a regular file.")
        if not overwrite:
            raise InvalidInputError(f"'{target}' already exists. Pass overwrite=true to replace it, or another name.")
    return target


def write_atomically(target: Path, source: Path) -> None:
    tmp = target.parent / f".{target.name}.{secrets.token_hex(4)}.part"
    # O_EXCL alone already refuses an existing name (a symlink included); O_NOFOLLOW is POSIX only; O_BINARY is
    # Windows only, where a descriptor opened without it turns "\n" into "\r\n"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
    fd = os.open(tmp, flags, 0o644)
    try:
        with os.fdopen(fd, "wb") as out, open(source, "rb") as src:
            while chunk := src.read(1024 * 1024):
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def roots_from_uris(uris: Sequence[str]) -> list[Path]:
    """file:// root URIs from the client, resolved; other schemes are ignored."""
    from urllib.parse import unquote, urlparse

    roots = []
    for uri in uris:
        parsed = urlparse(uri)
        if parsed.scheme == "file" and parsed.path:
            roots.append(Path(unquote(parsed.path)).resolve())
    return roots
