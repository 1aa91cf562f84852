"""The MCP face of ci-mcp: tools, the files resource, and the translation of domain values into MCP content.

With `http.py` (how HTTP callers get in), the only module that imports `mcp`. Results that carry pictures never
set `structuredContent` and the tools declare no output schema, because some clients (Claude Code among them) drop
image blocks otherwise.
"""

import base64
import binascii
import logging
import re
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

import anyio
from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.lowlevel.helper_types import ReadResourceContents
from mcp.server.mcpserver import Context, ListRoots, MCPServer, Resolve
from mcp_types import (
    BlobResourceContents,
    CallToolResult,
    ContentBlock,
    EmbeddedResource,
    ImageContent,
    ListRootsResult,
    Resource,
    ResourceLink,
    TextContent,
    ToolAnnotations,
)
from pydantic import Field

from ci_mcp import __version__, paths
from ci_mcp.backends.base import Backend
from ci_mcp.errors import CiMcpError, FileTooLargeError, InvalidInputError
from ci_mcp.http import HttpPlan, principal_of
from ci_mcp.images import preview
from ci_mcp.models import ErrorOutput, FileInfo, ImageOutput, RunRequest, RunResult, TextOutput
from ci_mcp.ownership import OwnedBackend, Owners
from ci_mcp.settings import Settings
from ci_mcp.textsafe import escaped, plain, quote
from ci_mcp.uploads import ChunkedUploads, Progress

log = logging.getLogger(__name__)

FILE_URI = "ci-mcp://files/{file_id}"
MAX_INLINE_IMAGES = 8
MAX_LISTED_RESOURCES = 100
MAX_FILE_IDS = 100
# Protocol versions that predate the `resource_link` content block: clients on them reject a whole result that
# carries one, so links go to them as text blocks instead.
NO_RESOURCE_LINK_VERSIONS = frozenset({"2024-11-05", "2025-03-26"})


def file_uri(file_id: str) -> str:
    return f"ci-mcp://files/{file_id}"


class _CiMcpServer(MCPServer[Any]):
    """MCPServer whose file resource reports each file's own media type."""

    backend: Backend
    ci_settings: Settings

    async def read_resource(self, uri: Any, context: Any = None) -> Any:
        text = str(uri)
        prefix = "ci-mcp://files/"
        if text.startswith(prefix):
            from mcp.server.mcpserver.exceptions import ResourceError

            try:
                info, data = await _read_inline(self.backend, self.ci_settings, text[len(prefix) :])
            except CiMcpError as exc:
                raise ResourceError(str(exc)) from None
            if info.is_text:
                return [ReadResourceContents(data.decode("utf-8", errors="replace"), info.media_type)]
            return [ReadResourceContents(data, info.media_type)]
        return await super().read_resource(uri, context)

    async def list_resources(self) -> list[Resource]:
        """The most recent stored files (uploads and generated), newest first, then any static resources."""
        files = (await self.backend.list_files(None))[::-1][:MAX_LISTED_RESOURCES]
        listed = [
            Resource(
                uri=file_uri(f.file_id),
                name=escaped(f.name),
                description=f"{f.file_id}: {f.origin} file" + (f" of session {f.session_id}" if f.session_id else ""),
                mime_type=f.media_type,
                size=f.size,
            )
            for f in files
        ]
        return listed + await super().list_resources()


def current_principal() -> str | None:
    """The principal of the request being served: its token's, or None without authentication."""
    return principal_of(get_access_token())


def resource_limit(settings: Settings) -> int:
    """The largest file `resources/read` returns: what fetch_generated_file would return inline."""
    return max(settings.inline_text_fetch_bytes, settings.inline_image_bytes)


async def _read_inline(backend: Backend, settings: Settings, file_id: str) -> tuple[FileInfo, bytes]:
    """A stored file's bytes for a resource read, if it is small enough to return inline; read off the loop."""
    info = await backend.file_info(file_id.strip())
    source = await backend.file_path(info.file_id)
    limit = resource_limit(settings)

    def read() -> bytes:
        with open(source, "rb") as fh:
            data = fh.read(limit + 1)
        return data

    if info.size <= limit:
        data = await anyio.to_thread.run_sync(read)
        if len(data) <= limit:
            return info, data
    how = (
        f'call fetch_generated_file(file_id="{info.file_id}") for a picture shrunk to fit, or add save_to'
        if info.is_image
        else f'call fetch_generated_file(file_id="{info.file_id}", save_to=<a path on the server\'s machine>)'
    )
    raise FileTooLargeError(
        f"{info.file_id} ({info.name}) is {info.size:,} bytes, over the {limit:,}-byte limit for reading it as a "
        f"resource; {how} to write the full file to disk."
    )


async def _client_roots(ctx: Context) -> ListRoots | None:
    """Ask the client for its roots when it offers them; otherwise the configured roots apply."""
    caps = ctx.client_capabilities
    if caps is not None and caps.roots is not None:
        return ListRoots()
    return None


ClientRoots = Annotated[ListRootsResult | None, Resolve(_client_roots)]


def create_server(backend: Backend, settings: Settings, http: HttpPlan | None = None) -> MCPServer[Any]:
    """Build the MCP server around one backend. The caller owns neither: the server's lifespan starts and
    closes the backend. With an HTTP plan that authenticates callers, every session and file belongs to the
    principal that created it (`ownership.py`)."""
    owners: Owners | None = None
    chunks = ChunkedUploads(settings.data_dir, settings.max_upload_bytes)
    if http is not None and http.verifier is not None:
        owners = Owners(settings.data_dir)
        backend = OwnedBackend(backend, owners, current_principal, settings.max_sessions_per_principal)

    @asynccontextmanager
    async def lifespan(_: MCPServer[Any]) -> AsyncIterator[None]:
        await backend.start()
        try:
            yield None
        finally:
            await backend.aclose()
            if owners is not None:
                owners.close()

    code_arg = "Python `code`" if backend.accepts_code else ""
    req_arg = "a natural-language `request`" if backend.accepts_request else ""
    accepts = " and/or ".join(a for a in (code_arg, req_arg) if a)
    server = _CiMcpServer(
        "ci-mcp",
        version=__version__,
        instructions=(
            f"A code interpreter ({backend.name} backend). Upload data with upload_file, analyse it with "
            f"run_code_analysis ({accepts}; keep the returned session_id to continue with the same state), and "
            "get generated files with fetch_generated_file. " + backend.describe()
        ),
        lifespan=lifespan,
        log_level=settings.log_level,
        auth=http.auth if http is not None else None,
        token_verifier=http.verifier if http is not None else None,
    )
    server.backend = backend
    server.ci_settings = settings
    # No prompts are defined: drop their handlers so initialize does not advertise a `prompts` capability.
    for method in ("prompts/list", "prompts/get"):
        server._lowlevel_server._request_handlers.pop(method, None)

    def roots_for(listed: ListRootsResult | None) -> paths.Roots:
        client = None
        if listed is not None and listed.roots:
            client = paths.roots_from_uris([str(r.uri) for r in listed.roots]) or None
        return paths.effective_roots(settings.allowed_dirs, client, Path.cwd(), Path.home())

    @server.tool(
        description=(
            "Make a file available to run_code_analysis. Give either `path` (a file on the machine running this "
            "server, inside its allowed directories) or `content_base64` with `filename` (for clients on another "
            f"machine; at most {settings.max_inline_upload_bytes // (1024 * 1024)} MB). Local files may be up to "
            f"{settings.max_upload_bytes // (1024 * 1024)} MB. Returns a file id to pass in file_ids. A larger "
            "file from another machine goes in chunks: the first with `filename` and more=true returns an "
            "upload_id; then each chunk with upload_id and its offset; the last with more=false and `sha256`."
        ),
        annotations=ToolAnnotations(title="Upload a file", read_only_hint=False, open_world_hint=False),
        structured_output=False,
    )
    async def upload_file(
        path: Annotated[str | None, Field(description="Absolute path of a local file to upload.")] = None,
        content_base64: Annotated[str | None, Field(description="The file's bytes, base64-encoded.")] = None,
        filename: Annotated[str | None, Field(description="Name for the file (required with content_base64).")] = None,
        more: Annotated[
            bool,
            Field(
                description="Chunked upload, for files over the inline limit: true while more chunks follow. The "
                "first chunk (no upload_id) returns an upload_id."
            ),
        ] = False,
        upload_id: Annotated[str | None, Field(description="The chunked upload this chunk continues.")] = None,
        offset: Annotated[int, Field(description="Where this chunk starts in the file (bytes sent so far).")] = 0,
        sha256: Annotated[
            str | None, Field(description="With the last chunk (more=false): hex SHA-256 of the whole file.")
        ] = None,
        roots: ClientRoots = None,
    ) -> CallToolResult:
        try:
            if more or upload_id is not None:
                chunked = await _chunk(content_base64, filename, path, more, upload_id, offset, sha256)
                if isinstance(chunked, Progress):
                    return CallToolResult(content=[_text(_chunk_progress(chunked))])
                info, given = chunked
            else:
                info, given = await _upload(path, content_base64, filename, roots_for(roots))
        except CiMcpError as exc:
            return _error(exc)
        except Exception as exc:
            return _unexpected("upload_file", exc)
        where = (
            f"at {backend.data_mount}/{info.name}"
            if backend.data_mount
            else f"as {quote(info.name)} in its working directory"
        )
        text = (
            f"Uploaded {quote(info.name)} as {info.file_id} ({info.size:,} bytes, {info.media_type}). "
            f'Pass file_ids=["{info.file_id}"] to run_code_analysis; the code will find it {where}.'
        )
        if info.name != given:
            text += (
                f" The name {quote(given)} was changed to {quote(info.name)}: a file name there cannot hold "
                "directories, control characters or more than 255 bytes, nor be '.' or '..'."
            )
        return _with_ids(CallToolResult(content=[TextContent(type="text", text=text)]), None, [info])

    async def _upload(
        path: str | None, content_b64: str | None, filename: str | None, roots: list[Path]
    ) -> tuple[FileInfo, str]:
        """The stored file and the name it was given (the stored name is what the code sees)."""
        if (path is None) == (content_b64 is None):
            raise InvalidInputError("Pass exactly one of `path` or `content_base64` (with `filename`).")
        if content_b64 is not None:
            if not filename or not filename.strip():
                raise InvalidInputError("`filename` is required with content_base64 (e.g. 'data.csv').")
            data = _decode_inline(content_b64, filename, settings.max_inline_upload_bytes)
            if not data:
                raise InvalidInputError(f"'{filename}' is empty (0 bytes); there is nothing to analyse.")
            return await backend.upload(_clean_name(filename), data), filename
        assert path is not None
        real = paths.resolve_readable(path, roots)
        size = real.stat().st_size
        if size == 0:
            raise InvalidInputError(f"'{path}' is empty (0 bytes); there is nothing to analyse.")
        if size > settings.max_upload_bytes:
            raise FileTooLargeError(
                f"'{path}' is {size:,} bytes, over the limit of {settings.max_upload_bytes:,}. Upload a smaller "
                "extract (e.g. filter rows or columns first)."
            )
        return await backend.upload(_clean_name(filename or real.name), real), filename or real.name

    async def _chunk(
        content_b64: str | None,
        filename: str | None,
        path: str | None,
        more: bool,
        upload_id: str | None,
        offset: int,
        sha256: str | None,
    ) -> Progress | tuple[FileInfo, str]:
        """One chunk of a chunked upload; the stored file once the last chunk's checksum matched."""
        if path is not None or content_b64 is None:
            raise InvalidInputError("A chunked upload sends each chunk as `content_base64` (no `path`).")
        data = _decode_inline(content_b64, filename or upload_id or "the chunk", settings.max_inline_upload_bytes)
        principal = current_principal()
        if upload_id is None:
            if not filename or not filename.strip():
                raise InvalidInputError("`filename` is required with the first chunk (e.g. 'data.csv').")
            if offset:
                raise InvalidInputError("The first chunk starts at offset 0; pass upload_id to continue an upload.")
            started = await anyio.to_thread.run_sync(chunks.begin, filename, data, principal)
            if more:
                return started
            upload_id = started.upload_id
        elif data or more:
            progress = await anyio.to_thread.run_sync(chunks.append, upload_id.strip(), offset, data, principal)
            if more:
                return progress
        done = await anyio.to_thread.run_sync(chunks.finish, upload_id.strip(), sha256, principal)
        try:
            info = await backend.upload(_clean_name(done.name), done.path)
        finally:
            await anyio.to_thread.run_sync(chunks.discard, upload_id.strip())
        return info, done.name

    run_description = (
        "Run one analysis step and get back its text output, errors (with traceback), every chart as an image, "
        "and links to every other file it wrote. "
        + backend.describe()
        + " Pass session_id from an earlier result to continue in the same session (variables and files kept); "
        "omit it to start a new one. Pass file_ids from upload_file to make those files available."
    )

    @server.tool(
        description=run_description,
        annotations=ToolAnnotations(title="Run code analysis", read_only_hint=False, open_world_hint=False),
        structured_output=False,
    )
    async def run_code_analysis(
        ctx: Context,
        code: Annotated[
            str | None,
            Field(description="Python code to run." if backend.accepts_code else "Python code for the agent to run."),
        ] = None,
        request: Annotated[
            str | None,
            Field(
                description="What to analyse, in plain words (the backend's model writes the code)."
                if backend.accepts_request
                else "Not supported by this backend without a configured model; pass `code`."
            ),
        ] = None,
        file_ids: Annotated[
            list[str] | None, Field(description=f"Ids from upload_file to make available (at most {MAX_FILE_IDS}).")
        ] = None,
        session_id: Annotated[str | None, Field(description="Continue this session (from an earlier result).")] = None,
        timeout_seconds: Annotated[
            float | None,
            Field(
                description=f"Time limit for this run (default {settings.run_timeout_seconds:g} s, "
                f"at most {settings.max_run_timeout_seconds:g} s)."
            ),
        ] = None,
    ) -> CallToolResult:
        async def progress(done: float, total: float | None, message: str) -> None:
            await ctx.report_progress(done, total, message)

        try:
            req = RunRequest(
                session_id=session_id or None,
                code=code or None,
                request=request or None,
                file_ids=_file_ids(file_ids),
                timeout_seconds=timeout_seconds,
            )
            result = await backend.run(req, progress)
        except CiMcpError as exc:
            return _error(exc)
        except Exception as exc:
            return _unexpected("run_code_analysis", exc)
        rendered = await anyio.to_thread.run_sync(_render_run, result, settings, _links_ok(ctx))
        return _with_ids(rendered, result.session_id, result.generated_files)

    @server.tool(
        description=(
            "Get a file by id (from run_code_analysis or upload_file): pictures come back as an image, small text "
            "files as text, other files as an embedded resource. Pass `save_to` (a file or directory path on the "
            "server's machine, inside its allowed directories) to write the full file there instead."
        ),
        annotations=ToolAnnotations(title="Fetch a generated file", read_only_hint=False, open_world_hint=False),
        structured_output=False,
    )
    async def fetch_generated_file(
        ctx: Context,
        file_id: Annotated[str, Field(description="The file id, e.g. file-0123abcd...")],
        save_to: Annotated[str | None, Field(description="Write the file here instead of returning it.")] = None,
        overwrite: Annotated[bool, Field(description="Replace an existing file at save_to.")] = False,
        roots: ClientRoots = None,
    ) -> CallToolResult:
        try:
            info = await backend.file_info(file_id.strip())
            source = await backend.file_path(info.file_id)
            if save_to is not None:
                target = paths.resolve_writable(
                    save_to, paths.safe_name(info.name), roots_for(roots), overwrite=overwrite
                )
                await anyio.to_thread.run_sync(paths.write_atomically, target, source)
                text = f"Saved {info.file_id} ({quote(info.name)}, {info.size:,} bytes) to {target}."
                return CallToolResult(content=[TextContent(type="text", text=text)])
            return await anyio.to_thread.run_sync(_render_file, info, source, settings, _links_ok(ctx))
        except CiMcpError as exc:
            return _error(exc)
        except Exception as exc:
            return _unexpected("fetch_generated_file", exc)

    @server.tool(
        description=(
            "List stored files (uploads and generated files) with their ids, names and sizes; pass session_id to "
            "list only that session's generated files. Use it when you have lost track of an id."
        ),
        annotations=ToolAnnotations(title="List files", read_only_hint=True, open_world_hint=False),
        structured_output=False,
    )
    async def list_files(
        session_id: Annotated[str | None, Field(description="Only this session's files.")] = None,
    ) -> CallToolResult:
        try:
            files = await backend.list_files(session_id or None)
        except CiMcpError as exc:
            return _error(exc)
        if not files:
            return CallToolResult(content=[_text("No files stored yet." if not session_id else "No files.")])
        lines = [
            f"{f.file_id}  {f.origin:9}  {f.size:>12,} B  {f.media_type:28}  {quote(f.name)}"
            + (f"  (session {f.session_id})" if f.session_id and not session_id else "")
            for f in files[-200:]
        ]
        return CallToolResult(content=[_text("\n".join(lines))])

    @server.tool(
        description=(
            "End a session: its kernel (or remote conversation) is stopped and its memory freed. Its files stay "
            "fetchable. Continuing it later starts a fresh kernel with the same files."
        ),
        annotations=ToolAnnotations(title="Close a session", destructive_hint=False, open_world_hint=False),
        structured_output=False,
    )
    async def close_session(session_id: Annotated[str, Field(description="The session to end.")]) -> CallToolResult:
        try:
            await backend.close_session(session_id.strip())
        except CiMcpError as exc:
            return _error(exc)
        return CallToolResult(content=[_text(f"Session {session_id} closed; its files are kept.")])

    @server.resource(
        FILE_URI,
        name="generated-file",
        description="A file uploaded to or generated by ci-mcp, by id.",
        mime_type="application/octet-stream",
    )
    async def file_resource(file_id: str) -> bytes:
        # Served by _CiMcpServer.read_resource with each file's own media type; kept for resources/templates/list.
        return (await _read_inline(backend, settings, file_id))[1]

    return server


_B64_ALPHABET = re.compile(rb"[A-Za-z0-9+/]*={0,2}")
_WHITESPACE = re.compile(r"\s+")


def _decode_inline(content_b64: str, filename: str, limit: int) -> bytes:
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


def _file_ids(given: list[str] | None) -> tuple[str, ...]:
    """The distinct ids, in the order given; at most MAX_FILE_IDS of them."""
    ids = tuple(dict.fromkeys(fid.strip() for fid in given or () if fid.strip()))
    if len(ids) > MAX_FILE_IDS:
        raise InvalidInputError(
            f"file_ids holds {len(ids)} distinct ids; at most {MAX_FILE_IDS} may be passed to one run. Files placed "
            "by an earlier run stay in the session's working directory, so pass the rest in a later call with the "
            "same session_id, or upload a zip of them."
        )
    return ids


def _chunk_progress(progress: Progress) -> str:
    return (
        f"Chunk received: upload {progress.upload_id} has {progress.received:,} bytes so far (nothing is a file yet). "
        f'Send the next chunk with upload_id="{progress.upload_id}", offset={progress.received} and more=true; '
        "with the last one pass more=false and sha256 (the hex SHA-256 of the whole file)."
    )


def _clean_name(name: str) -> str:
    """The name the code will see (paths.workspace_name); a name with nothing usable in it is refused."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1].strip()
    if not base or base in (".", ".."):
        raise InvalidInputError("`filename` must be a plain file name such as 'data.csv'.")
    return paths.workspace_name(base)


META_KEY = "ci-mcp/ids"


def _with_ids(result: CallToolResult, session_id: str | None, files: Sequence[FileInfo]) -> CallToolResult:
    """The ids a result creates, machine-readable in `_meta` (never `structuredContent`: images must survive)."""
    ids: dict[str, Any] = {"files": [{"file_id": f.file_id, "name": f.name, "media_type": f.media_type} for f in files]}
    if session_id is not None:
        ids["session_id"] = session_id
    return result.model_copy(update={"meta": {META_KEY: ids}})


def _error(exc: CiMcpError) -> CallToolResult:
    text = f"Error: {exc}"
    if exc.session_id:
        text = f"session_id: {exc.session_id} | {text}"
    if exc.transient:
        retry_after = getattr(exc, "retry_after", None)
        text += " (temporary: try again" + (f" in {retry_after:g} s" if retry_after else " shortly") + ")"
    return CallToolResult(content=[TextContent(type="text", text=text)], is_error=True)


def _unexpected(tool: str, exc: Exception) -> CallToolResult:
    """A failure nothing anticipated: logged with its traceback, and said plainly (never a bare protocol error)."""
    log.exception("%s failed unexpectedly", tool)
    detail = f"{type(exc).__name__}: {exc}"[:500]
    return _error(
        CiMcpError(
            f"{tool} failed inside the server ({detail}). This is not caused by the arguments; trying again may "
            "work, and the server log has the details for the operator."
        )
    )


def _links_ok(ctx: Context) -> bool:
    """Whether the negotiated protocol version defines the `resource_link` content block."""
    return ctx.protocol_version not in NO_RESOURCE_LINK_VERSIONS


def _link(info: FileInfo, description: str, links_ok: bool = True) -> ResourceLink | TextContent:
    if not links_ok:
        return _text(
            f"[file {quote(info.name)}: {file_uri(info.file_id)} ({info.media_type}, {info.size:,} bytes) - "
            f"{description}; "
            f'get it with fetch_generated_file(file_id="{info.file_id}")]'
        )
    return ResourceLink(
        type="resource_link",
        uri=file_uri(info.file_id),
        name=escaped(info.name),
        mime_type=info.media_type,
        size=info.size,
        description=description,
    )


def _text(text: str) -> TextContent:
    return TextContent(type="text", text=text)


def _render_run(result: RunResult, settings: Settings, links_ok: bool = True) -> CallToolResult:
    """Ordered blocks: a summary line, the outputs as they came, then files and notices."""
    content: list[ContentBlock] = []
    images = [o for o in result.outputs if isinstance(o, ImageOutput)]
    inline = images[:MAX_INLINE_IMAGES]
    budget = max(60_000, settings.inline_image_bytes // max(1, len(inline)))
    status_text = {
        "ok": "completed",
        "error": "the code raised an error (see the traceback)",
        "timeout": "stopped at the time limit",
        "kernel_died": "the kernel died",
        "cancelled": "cancelled",
        "incomplete": "stopped before it was complete (see the notes below)",
        "server_error": "the server failed during the run (see the notices); the output up to then is below",
    }[result.status]
    content.append(_text(f"session_id: {result.session_id} | {status_text} | {result.duration_seconds:.2f} s"))
    shown_images: set[str] = set()
    for item in result.outputs:
        if isinstance(item, TextOutput):
            prefix = {"stderr": "[stderr]\n", "code": "[code]\n"}.get(item.kind, "")
            content.append(_text(prefix + plain(item.text)))
        elif isinstance(item, ErrorOutput):
            content.append(_text(plain(f"Error: {item.name}: {item.value}\n{item.traceback}")))
        elif isinstance(item, ImageOutput) and item in inline:
            shown = preview(item.data, budget, settings.max_image_pixels)
            if shown.refused:
                why = f"{shown.refused}; it is kept as a file"
                content.append(_text(f"[no picture for {quote(item.file.name)} = {item.file.file_id}: {why}]"))
                continue
            content.append(
                ImageContent(type="image", data=base64.b64encode(shown.data).decode(), mime_type=shown.media_type)
            )
            note = f" (shrunk for display; full size: fetch_generated_file {item.file.file_id})" if shown.shrunk else ""
            content.append(_text(f"[image {quote(item.file.name)} = {item.file.file_id}{note}]"))
            shown_images.add(item.file.file_id)
    for info in result.generated_files:
        if info.file_id not in shown_images:
            content.append(_link(info, f"{info.file_id}: generated by the run", links_ok))
    lines = []
    if result.generated_files:
        lines.append(
            "Generated files (fetch_generated_file): "
            + ", ".join(f"{quote(f.name)} = {f.file_id}" for f in result.generated_files)
        )
    lines.extend(result.notices)
    if lines:
        content.append(_text("\n".join(lines)))
    return CallToolResult(
        content=content, is_error=result.status in ("timeout", "kernel_died", "cancelled", "server_error")
    )


def _render_file(info: FileInfo, source: Path, settings: Settings, links_ok: bool = True) -> CallToolResult:
    header = f"{info.file_id}: {quote(info.name)} ({info.size:,} bytes, {info.media_type})"
    if info.is_image:
        if info.size > settings.max_display_bytes:
            why = f"it is over the {settings.max_display_bytes:,} bytes previewed (CI_MCP_MAX_DISPLAY_BYTES)"
        else:
            shown = preview(source.read_bytes(), settings.inline_image_bytes, settings.max_image_pixels)
            if not shown.refused:
                note = " - shrunk to fit the result; pass save_to for the full-size file" if shown.shrunk else ""
                image = ImageContent(
                    type="image", data=base64.b64encode(shown.data).decode(), mime_type=shown.media_type
                )
                return CallToolResult(content=[_text(header + note), image])
            why = shown.refused
        # Never handed over as bytes a client would decode as a picture: only a link, and the way to save it.
        return CallToolResult(
            content=[
                _text(f"{header} - no picture shown: {why}. Pass save_to to write the file to disk."),
                _link(info, info.file_id, links_ok),
            ]
        )
    if info.is_text and info.size <= settings.inline_text_fetch_bytes:
        body = source.read_bytes().decode("utf-8", errors="replace")
        return CallToolResult(content=[_text(header), _text(body)])
    if info.size <= settings.inline_image_bytes:
        blob = BlobResourceContents(
            uri=file_uri(info.file_id), blob=base64.b64encode(source.read_bytes()).decode(), mime_type=info.media_type
        )
        return CallToolResult(content=[_text(header), EmbeddedResource(type="resource", resource=blob)])
    return CallToolResult(
        content=[
            _text(
                header + " - too large to return inline. Pass save_to (a file or directory path on the server's "
                "machine) to write it to disk."
            ),
            _link(info, info.file_id, links_ok),
        ]
    )
