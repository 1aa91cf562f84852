"""The first answers of a stdio start, before the MCP SDK is imported (issue 12).

Importing the SDK takes most of a start (0.6-0.8 s on a small machine), and a client waits for `initialize` and
`tools/list` before anything else. So `cli.py` claims the wire (`Wire`) and, when the start cache of this exact
configuration is there (`CacheFile`), a `Responder` thread answers `initialize`, `tools/list` and `ping` from it
(and, in the 2026-07-28 era that opens without a handshake, `server/discover`, `tools/list` and `ping` carrying a
plain envelope) while the main thread imports the SDK and builds the server. Everything else waits. At the
hand-over the server is fed every byte the client sent, from the start (`HandOver`): it answers all of it itself,
and the responses the client already has are dropped by id (`stdio.py`).

The cache is only ever written by the real server (`stdio.record_start_answers`, on every start, rewritten when
it changed) into the data directory. Its key covers ci-mcp (its version and its source files), the MCP SDK,
pydantic and Python, and every setting the server is started with (the environment values `cli.py` passes in,
secrets reduced to whether they are set). A file with another key, an unknown format or any damage is ignored:
the start then takes the normal path and writes it. A message the cache cannot answer exactly (an `initialize`
whose parameters are unusual, a request before the era is open, an unsupported version, pagination) is left to the
server.

Part of the MCP face, but it imports nothing of the SDK (nor pydantic, nor anyio, nor dataclasses): what it answers
is the server's own recorded JSON.
"""

from __future__ import annotations

import codecs
import hashlib
import io
import json
import os
import select
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

from ci_mcp import __version__

CACHE_NAME = "start-cache.json"
FORMAT = 1
MAX_CACHE_BYTES = 4 * 1024 * 1024
# Distributions whose code shapes the answers: the SDK, its types, and the models that render the tool schemas.
SHAPING_DISTRIBUTIONS = ("mcp", "mcp_types", "pydantic", "pydantic_core")
REQUEST_KEYS = frozenset({"jsonrpc", "id", "method", "params"})
READ_SIZE = 65536


class LineSplitter:
    """Bytes in, text lines out, as `TextIOWrapper(encoding="utf-8", errors="replace")` iterates them (the SDK's
    stdio transport): universal newlines translated to "\\n", each line with its newline, and the last one without
    it at the end of input."""

    def __init__(self) -> None:
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._decoder = io.IncrementalNewlineDecoder(decoder, translate=True)
        self._pending = ""

    def feed(self, data: bytes, final: bool = False) -> list[str]:
        text = self._pending + self._decoder.decode(data, final)
        lines = text.split("\n")
        self._pending = lines.pop()
        out = [line + "\n" for line in lines]
        if final and self._pending:
            out.append(self._pending)
            self._pending = ""
        return out


class Wire:
    """The client's stdin and stdout, moved to private descriptors; fd 0 reads the null device and fd 1 goes to
    stderr meanwhile, so that nothing else (a probe, a kernel, a stray print) reads or writes the wire. As the SDK's
    stdio transport does; `release` puts them back."""

    def __init__(self, read_fd: int, write_fd: int) -> None:
        self.read_fd, self.write_fd = read_fd, write_fd
        self._restore: list[tuple[int, int]] = []

    @classmethod
    def claim(cls) -> Wire:
        import fcntl

        wire = cls(0, 1)
        sys.stdout.flush()
        try:
            wire.read_fd = fcntl.fcntl(0, fcntl.F_DUPFD_CLOEXEC, 3)
            wire._restore.append((wire.read_fd, 0))
            null = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null, 0)
            os.close(null)
            wire.write_fd = fcntl.fcntl(1, fcntl.F_DUPFD_CLOEXEC, 3)
            wire._restore.append((wire.write_fd, 1))
            os.dup2(2, 1)
        except OSError:  # serve in place: as the SDK does when it cannot divert
            wire.release()
            return cls(0, 1)
        return wire

    def release(self) -> None:
        while self._restore:
            private, fd = self._restore.pop()
            try:
                os.dup2(private, fd)
                os.close(private)
            except OSError:
                pass
        self.read_fd, self.write_fd = 0, 1


def cache_key(settings_inputs: Mapping[str, Any]) -> str:
    """The key of the start cache: this code, the libraries that shape its answers, and the settings inputs."""
    parts = {
        "format": FORMAT,
        "ci_mcp": __version__,
        "source": _source_stamp(),
        "python": [sys.version, sys.executable],
        "distributions": _distributions(SHAPING_DISTRIBUTIONS),
        "settings": settings_inputs,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def _source_stamp() -> list[tuple[str, int, int]]:
    """Every source file of ci_mcp, by size and modification time (a checkout changes without a new version)."""
    root = Path(__file__).resolve().parent
    stamp = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for name in sorted(files):
            if name.endswith(".py"):
                st = os.stat(os.path.join(folder, name))
                stamp.append((os.path.relpath(os.path.join(folder, name), root), st.st_mtime_ns, st.st_size))
    return stamp


def _distributions(names: tuple[str, ...]) -> dict[str, str]:
    """`name-version.dist-info` of each distribution, first on sys.path (where it is imported from), without
    importlib.metadata (which costs tens of milliseconds)."""
    found: dict[str, str] = {}
    for entry in sys.path:
        try:
            listing = os.listdir(entry or ".")
        except OSError:
            continue
        for item in listing:
            if item.endswith(".dist-info"):
                dist = item.split("-", 1)[0].lower().replace(".", "_")
                if dist in names and dist not in found:
                    found[dist] = os.path.join(entry, item)
    return found


class CacheFile:
    """The recorded first answers of one configuration (`path` in the data directory, `key` from `cache_key`)."""

    def __init__(self, path: Path, key: str) -> None:
        self.path, self.key = path, key

    def load(self) -> dict[str, Any] | None:
        """The answers, or None for a missing, foreign, stale or damaged file."""
        try:
            with open(self.path, "rb") as fh:
                raw = fh.read(MAX_CACHE_BYTES + 1)
            if len(raw) > MAX_CACHE_BYTES:
                return None
            content = json.loads(raw)
        except (OSError, ValueError):
            return None
        if not isinstance(content, dict) or content.get("format") != FORMAT or content.get("key") != self.key:
            return None
        answers = content.get("answers")
        return answers if _well_formed(answers) else None

    def write(self, answers: dict[str, Any]) -> None:
        """Write atomically (a reader sees the old file or the new one); a failure only costs the fast start."""
        body = json.dumps({"format": FORMAT, "key": self.key, "answers": answers}, ensure_ascii=True)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            import tempfile

            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".start-cache-")
            try:
                with os.fdopen(fd, "w") as fh:
                    fh.write(body)
                os.replace(tmp, self.path)
            except BaseException:
                os.unlink(tmp)
                raise
        except OSError as exc:
            print(f"ci-mcp WARNING could not write the start cache {self.path}: {exc}", file=sys.stderr)


def _well_formed(answers: object) -> bool:
    if not isinstance(answers, dict):
        return False
    initialize, tools = answers.get("initialize"), answers.get("tools/list")
    if not (isinstance(initialize, dict) and initialize and isinstance(tools, dict)):
        return False
    for version, result in initialize.items():
        if not (isinstance(result, dict) and result.get("protocolVersion") == version):
            return False
        if not isinstance(tools.get(version), dict):
            return False
    modern, envelope = answers.get("modern"), answers.get("envelope")
    if not (isinstance(modern, dict) and isinstance(envelope, dict)):
        return False
    if set(envelope) != {"version", "info", "capabilities"} or not all(isinstance(v, str) for v in envelope.values()):
        return False
    if not all(isinstance(m, dict) and all(isinstance(r, dict) for r in m.values()) for m in modern.values()):
        return False
    return answers.get("fallback") in initialize and isinstance(answers.get("ping"), dict)


class HandOver(NamedTuple):
    """What the responder saw and did: every byte it read from the client, whether the input ended, and the
    response it sent to each request id it answered (and the cache it answered from)."""

    consumed: bytes
    eof: bool
    answered: dict[str | int, Any]
    cached: dict[str, Any]


class Responder:
    """Answers the first messages from the cache in a thread of its own, until `stop` hands over."""

    def __init__(self, wire: Wire, answers: dict[str, Any], trace: bool = False) -> None:
        self._wire = wire
        self._answers = answers
        self._trace = trace
        self._consumed = bytearray()
        self._eof = False
        self._answered: dict[str | int, Any] = {}
        self._era: str | None = None  # "legacy" once a plain request was answered, "modern" once an enveloped one
        self._version: str | None = None  # the negotiated version of the legacy era
        self._serving = True
        self._wake_r, self._wake_w = os.pipe()
        self._thread = threading.Thread(target=self._run, name="ci-mcp-fast-start", daemon=True)

    def start(self) -> Responder:
        self._thread.start()
        return self

    def stop(self) -> HandOver:
        """Stop reading (between two reads: nothing read is left half handled) and hand over what was seen."""
        if self._thread.is_alive():
            os.write(self._wake_w, b"x")
            self._thread.join()
        for fd in (self._wake_r, self._wake_w):
            os.close(fd)
        self._wake_r = self._wake_w = -1
        return HandOver(bytes(self._consumed), self._eof, dict(self._answered), self._answers)

    def _run(self) -> None:
        splitter = LineSplitter()
        while True:
            watched = [self._wake_r] if self._eof else [self._wake_r, self._wire.read_fd]
            ready, _, _ = select.select(watched, [], [])
            if self._wake_r in ready:
                return
            try:
                chunk = os.read(self._wire.read_fd, READ_SIZE)
            except OSError:
                chunk = b""
            self._consumed += chunk
            self._eof = not chunk
            for line in splitter.feed(chunk, final=self._eof):
                response = self._answer(line)
                if response is not None:
                    self._send(response)

    def _send(self, response: dict[str, Any]) -> None:
        data = (json.dumps(response, ensure_ascii=True, separators=(",", ":")) + "\n").encode()
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self._wire.write_fd, view) :]
        except OSError:
            return  # the client is gone; the server will see the end of its input
        if self._trace:
            os.write(2, f"ci-mcp DEBUG answered {response['id']!r} from the start cache\n".encode())

    def _answer(self, line: str) -> dict[str, Any] | None:
        """The response to one line, when the cache holds exactly what the server would answer."""
        if not self._serving:
            return None
        try:
            message = json.loads(line)
        except ValueError:
            message = None
        if isinstance(message, dict) and "id" not in message and isinstance(message.get("method"), str):
            return None  # a notification: the server gets it at the hand-over
        response = self._serve(message)
        if response is None and self._era is None:
            # Before initialize, anything else may decide the connection's protocol era: leave all to the server.
            self._serving = False
        return response

    def _serve(self, message: object) -> dict[str, Any] | None:
        if not (isinstance(message, dict) and message.get("jsonrpc") == "2.0" and set(message) <= REQUEST_KEYS):
            return None
        rid, method, params = message.get("id"), message.get("method"), message.get("params", {})
        if isinstance(rid, bool) or not isinstance(rid, int | str) or rid in self._answered:
            return None
        if not isinstance(params, dict):
            return None
        if "_meta" in params:
            result = self._modern_result(method, params)
        elif self._era == "modern":
            return None
        elif method == "initialize" and self._version is None:
            requested = _plain_initialize(params)
            if requested is None:
                return None
            initialize = self._answers["initialize"]
            result = initialize.get(requested) or initialize[self._answers["fallback"]]
            self._era, self._version = "legacy", result["protocolVersion"]
        elif method == "tools/list" and self._version is not None and not params:
            result = self._answers["tools/list"][self._version]
        elif method == "ping" and not params:
            result = self._answers["ping"]
            self._era = self._era or "legacy"  # a first request without the envelope opens the handshake era
        else:
            return None
        if result is None:
            return None
        response = {"jsonrpc": "2.0", "id": rid, "result": result}
        self._answered[rid] = response
        return response

    def _modern_result(self, method: object, params: dict[str, Any]) -> Any:
        """A 2026-07-28 request's result: only `_meta` in its parameters, a plain envelope at a recorded version."""
        if self._era == "legacy" or set(params) != {"_meta"} or not isinstance(method, str):
            return None
        version = _plain_envelope(params["_meta"], self._answers["envelope"])
        recorded = self._answers["modern"].get(version) if version is not None else None
        if recorded is None or method not in recorded:
            return None  # an unsupported version, or a method the cache does not hold: the server answers
        self._era = "modern"
        return recorded[method]


_OPTIONAL_TEXT = ("title", "description", "websiteUrl")


def _plain_envelope(meta: object, keys: dict[str, str]) -> str | None:
    """The protocol version of a per-request envelope the SDK surely accepts; None for anything unusual."""
    if not isinstance(meta, dict) or set(meta) - set(keys.values()):
        return None
    version, capabilities = meta.get(keys["version"]), meta.get(keys["capabilities"])
    if not isinstance(version, str) or not _plain_capabilities(capabilities):
        return None
    if keys["info"] in meta and not _plain_client(meta[keys["info"]]):
        return None
    return version


def _plain_capabilities(capabilities: object) -> bool:
    return isinstance(capabilities, dict) and all(isinstance(v, dict) for v in capabilities.values())


def _plain_client(client: object) -> bool:
    if not isinstance(client, dict) or set(client) - {"name", "version", *_OPTIONAL_TEXT}:
        return False
    if not all(isinstance(client.get(k), str) for k in ("name", "version")):
        return False
    return all(isinstance(client[k], str) for k in _OPTIONAL_TEXT if k in client)


def _plain_initialize(params: dict[str, Any]) -> str | None:
    """The requested protocol version of an `initialize` whose parameters the SDK surely accepts (the answer
    depends on nothing else); None for anything unusual, which the server then answers itself."""
    version, capabilities, client = params.get("protocolVersion"), params.get("capabilities"), params.get("clientInfo")
    if set(params) - {"protocolVersion", "capabilities", "clientInfo"} or not isinstance(version, str):
        return None
    return version if _plain_capabilities(capabilities) and _plain_client(client) else None
