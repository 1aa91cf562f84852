"""What an upload may be (inline base64 checked before decoding, the name the code sees, the run's file ids), and
chunked uploads: files larger than one request body, sent as `content_base64` chunks appended by offset.

A client sends the first chunk with `more=true` and gets an upload id; each next chunk names the id and the offset it
starts at (the bytes received so far); the last has `more=false` and the SHA-256 of the whole file. Until that last
chunk is checked, nothing is a file: the bytes wait in `<data_dir>/uploads/<id>/`, invisible to every tool, and are
dropped when the checksum does not match or the upload is left for `STALE_SECONDS`. A chunk sent again after a lost
answer (same offset, same bytes) is accepted once. An upload belongs to the principal that began it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
import secrets
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ci_mcp import paths
from ci_mcp.errors import FileTooLargeError, InvalidInputError, NotFoundError

STALE_SECONDS = 24 * 3600
MAX_FILE_IDS = 100


@dataclass(frozen=True)
class Progress:
    upload_id: str
    received: int


@dataclass(frozen=True)
class Complete:
    path: Path
    name: str
    size: int


def no_such_upload(upload_id: str) -> NotFoundError:
    return NotFoundError(
        f"No unfinished upload with id '{upload_id}' (finished, expired after a day, or never begun). Start again: "
        "send the first chunk with more=true and no upload_id."
    )


class ChunkedUploads:
    """Partial uploads on disk. Synchronous and quick per chunk; call from a worker thread."""

    def __init__(self, data_dir: Path, max_bytes: int) -> None:
        self.root = data_dir / "uploads"
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self.drop_stale()

    def drop_stale(self, now: float | None = None) -> None:
        cutoff = (now if now is not None else time.time()) - STALE_SECONDS
        for entry in self.root.iterdir():
            try:
                if entry.stat().st_mtime < cutoff:
                    shutil.rmtree(entry, ignore_errors=True)
            except OSError:
                continue

    def _dir(self, upload_id: str) -> Path:
        if not upload_id.startswith("up-") or not upload_id[3:].isalnum():
            raise no_such_upload(upload_id)
        return self.root / upload_id

    def _meta(self, where: Path, upload_id: str, principal: str | None) -> dict[str, object]:
        try:
            meta: dict[str, object] = json.loads((where / "meta.json").read_text())
        except (OSError, ValueError):
            raise no_such_upload(upload_id) from None
        if meta.get("principal") != principal:
            raise no_such_upload(upload_id)
        return meta

    def begin(self, name: str, chunk: bytes, principal: str | None) -> Progress:
        self._check_size(name, len(chunk))
        upload_id = "up-" + secrets.token_hex(12)
        where = self.root / upload_id
        where.mkdir(mode=0o700)
        with open(where / "data", "wb") as fh:
            fh.write(chunk)
        meta = {"name": name, "principal": principal, "created_at": time.time(), "last": _digest(chunk, 0)}
        (where / "meta.json").write_text(json.dumps(meta))
        return Progress(upload_id, len(chunk))

    def append(self, upload_id: str, offset: int, chunk: bytes, principal: str | None) -> Progress:
        where = self._dir(upload_id)
        with self._lock:
            meta = self._meta(where, upload_id, principal)
            data = where / "data"
            received = data.stat().st_size
            if offset != received:
                if chunk and _digest(chunk, offset) == meta.get("last") and offset + len(chunk) == received:
                    return Progress(upload_id, received)  # the last chunk again, after a lost answer
                raise InvalidInputError(
                    f"Upload {upload_id} has {received:,} bytes so far; send the chunk that starts at "
                    f"offset={received} (this one said offset={offset})."
                )
            try:
                self._check_size(str(meta["name"]), received + len(chunk))
            except FileTooLargeError:
                shutil.rmtree(where, ignore_errors=True)
                raise
            with open(data, "ab") as fh:
                fh.write(chunk)
            meta["last"] = _digest(chunk, offset)
            (where / "meta.json").write_text(json.dumps(meta))
            os.utime(where)
            return Progress(upload_id, received + len(chunk))

    def finish(self, upload_id: str, sha256: str | None, principal: str | None) -> Complete:
        """Check the whole file against `sha256`; on a match the caller stores `path` and calls `discard`."""
        where = self._dir(upload_id)
        with self._lock:
            meta = self._meta(where, upload_id, principal)
            if not sha256:
                raise InvalidInputError(
                    f"The last chunk of upload {upload_id} needs `sha256`: the hex SHA-256 of the whole file "
                    "(e.g. hashlib.sha256(data).hexdigest()), so a lost or doubled chunk cannot pass unnoticed."
                )
            data = where / "data"
            digest = hashlib.sha256()
            with open(data, "rb") as fh:
                for block in iter(lambda: fh.read(1024 * 1024), b""):
                    digest.update(block)
            size = data.stat().st_size
            if digest.hexdigest() != sha256.strip().lower():
                shutil.rmtree(where, ignore_errors=True)
                raise InvalidInputError(
                    f"Upload {upload_id} does not match its sha256 ({size:,} bytes received hash to "
                    f"{digest.hexdigest()}); it was discarded. Send the file again from the first chunk."
                )
            if size == 0:
                shutil.rmtree(where, ignore_errors=True)
                raise InvalidInputError(f"'{meta['name']}' is empty (0 bytes); there is nothing to analyse.")
            return Complete(data, str(meta["name"]), size)

    def discard(self, upload_id: str) -> None:
        shutil.rmtree(self._dir(upload_id), ignore_errors=True)

    def _check_size(self, name: str, size: int) -> None:
        if size > self.max_bytes:
            raise FileTooLargeError(
                f"'{name}' would be {size:,} bytes, over the upload limit of {self.max_bytes:,} "
                "(CI_MCP_MAX_UPLOAD_BYTES). Send a smaller extract."
            )


def _digest(chunk: bytes, offset: int) -> str:
    return f"{offset}:{hashlib.sha256(chunk).hexdigest()}"


_B64_ALPHABET = re.compile(rb"[A-Za-z0-9+/]*={0,2}")
_WHITESPACE = re.compile(r"\s+")


_WHITESPACE = re.compile(r"\s+")


def decode_inline(content_b64: str, filename: str, limit: int) -> bytes:
    """Standard base64 (line breaks and a `data:...;base64,` prefix allowed), checked exactly against `limit`
    before anything is decoded."""
    text = content_b64
    if text[:5].lower() == "data:" and ";base64," in text[:200]:
        text = text.split(";base64,", 1)[1]
    try:
        raw = _WHITESPACE.sub("", text).encode("ascii")
    except UnicodeEncodeError:
        raw = b"\x00"  # not ASCII: certainly not base64
    problem = ""
    if not _B64_ALPHABET.fullmatch(raw):
        problem = "it holds characters other than A-Z, a-z, 0-9, '+', '/' and trailing '='"
    elif len(raw) % 4:
        problem = f"its length ({len(raw):,} characters, whitespace aside) is not a multiple of 4 (missing '='?)"
    if problem:
        raise InvalidInputError(
            f"`content_base64` for '{filename}' is not valid base64: {problem}. Send the file's bytes in standard "
            "base64 (RFC 4648, e.g. Python's base64.b64encode)."
        )
    size = len(raw) // 4 * 3 - raw.endswith(b"=") - raw.endswith(b"==")
    if size > limit:
        raise FileTooLargeError(
            f"Inline content is over the limit of {limit:,} bytes for content_base64: '{filename}' is {size:,} "
            "bytes once decoded. Upload it by `path` from the server's machine, or send a smaller extract."
        )
    try:
        data = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInputError(
            f"`content_base64` for '{filename}' is not valid base64. Send the file's bytes in standard base64."
        ) from None
    assert len(data) == size
    return data


def one_source(path: str | None, content_b64: str | None) -> None:
    """A single upload names its bytes one way: a local `path` or inline `content_base64`."""
    if (path is None) == (content_b64 is None):
        raise InvalidInputError("Pass exactly one of `path` or `content_base64` (with `filename`).")


def inline_bytes(content_b64: str, filename: str | None, limit: int) -> bytes:
    """An inline upload's bytes: it needs a `filename`, valid base64 within `limit`, and something in it."""
    if not filename or not filename.strip():
        raise InvalidInputError("`filename` is required with content_base64 (e.g. 'data.csv').")
    data = decode_inline(content_b64, filename, limit)
    if not data:
        raise InvalidInputError(f"'{filename}' is empty (0 bytes); there is nothing to analyse.")
    return data


def check_local_size(path: str, size: int, limit: int) -> None:
    """A local file to upload has something in it and is at most `limit` bytes (`path` as the caller wrote it)."""
    if size == 0:
        raise InvalidInputError(f"'{path}' is empty (0 bytes); there is nothing to analyse.")
    if size > limit:
        raise FileTooLargeError(
            f"'{path}' is {size:,} bytes, over the limit of {limit:,}. Upload a smaller "
            "extract (e.g. filter rows or columns first)."
        )


def chunk_content(path: str | None, content_b64: str | None) -> str:
    """A chunk's base64 text: chunks are always inline, never a `path`."""
    if path is not None or content_b64 is None:
        raise InvalidInputError("A chunked upload sends each chunk as `content_base64` (no `path`).")
    return content_b64


def first_chunk_name(filename: str | None, offset: int) -> str:
    """The name a chunked upload begins with; the first chunk starts at offset 0."""
    if not filename or not filename.strip():
        raise InvalidInputError("`filename` is required with the first chunk (e.g. 'data.csv').")
    if offset:
        raise InvalidInputError("The first chunk starts at offset 0; pass upload_id to continue an upload.")
    return filename


def file_ids_of(given: list[str] | None) -> tuple[str, ...]:
    """The distinct ids, in the order given; at most MAX_FILE_IDS of them."""
    ids = tuple(dict.fromkeys(fid.strip() for fid in given or () if fid.strip()))
    if len(ids) > MAX_FILE_IDS:
        raise InvalidInputError(
            f"file_ids holds {len(ids)} distinct ids; at most {MAX_FILE_IDS} may be passed to one run. Files placed "
            "by an earlier run stay in the session's working directory, so pass the rest in a later call with the "
            "same session_id, or upload a zip of them."
        )
    return ids


def clean_name(name: str) -> str:
    """The name the code will see (paths.workspace_name); a name with nothing usable in it is refused."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1].strip()
    if not base or base in (".", ".."):
        raise InvalidInputError("`filename` must be a plain file name such as 'data.csv'.")
    return paths.workspace_name(base)
