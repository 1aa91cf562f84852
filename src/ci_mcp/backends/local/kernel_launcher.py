"""Entry point of a kernel process: apply resource limits, then become ci-mcp's IPython worker.

Run as `python kernel_launcher.py <limits-json> <socket-path>`. It imports nothing from ci_mcp, so it works inside
the sandbox with only the Python environment mounted. Where the server's Python has no unix sockets (Windows), the
path names instead an address file (ADDRESS_SUFFIX) in the private directory: a loopback TCP port and a token, which
the worker sends first (`hello`), so that no other local process can pass for the kernel.

The worker is an IPython `InteractiveShell` (what ipykernel runs too, without Jupyter's messaging around it) that
connects to the unix stream socket the server listens on at <socket-path>, in the kernel's private connection
directory. Frames both ways are one JSON object each, ASCII only (so a frame never contains a newline), ended by a
newline and sent after one: a reader that meets bytes it cannot parse is back in step at the next newline.

- server -> worker: `{"t": "execute", "id", "code"}`, one at a time; interrupts are SIGINT (kernel.py sends it
  to this process from the host, which works through the sandbox's pid namespace).
- worker -> server: `ready` once; then per execution `stream` {name, text}, `display` {data, update}, `result`
  {data}, `error` {ename, evalue, traceback}, `clear` {wait}, each with the execution's `id`, and last
  `done` {id, status}.

Output is buffered and sent when the buffer passes STREAM_FLUSH_BYTES, before any display, result or error, at the
end of each execution, and by a flusher thread every FLUSH_SECONDS while code runs. Output written to file
descriptors 1 and 2 (os.system, subprocesses, C libraries) comes through pipes read by that thread, as ipykernel
captures it. The server trusts nothing of this (kernel.py reads it as untrusted input).
"""

from __future__ import annotations

import binascii
import codecs
import json
import os
import select
import signal
import socket
import sys
import threading
from typing import Any

try:
    import resource
except ImportError:  # Windows: no rlimits
    resource = None  # type: ignore[assignment]


def apply_limits(limits: dict[str, int]) -> None:
    if resource is None:
        return
    table = {
        "memory_bytes": resource.RLIMIT_AS,
        "cpu_seconds": resource.RLIMIT_CPU,
        "processes": resource.RLIMIT_NPROC,
        "file_bytes": resource.RLIMIT_FSIZE,
    }
    for key, rlimit in table.items():
        value = limits.get(key)
        if value:
            soft = hard = int(value)
            if key == "cpu_seconds":
                hard = soft + 5  # SIGXCPU first, SIGKILL a little later
            ceiling = resource.getrlimit(rlimit)[1]  # never above the hard limit in force (macOS: NPROC's)
            if ceiling != resource.RLIM_INFINITY:
                soft, hard = min(soft, ceiling), min(hard, ceiling)
            resource.setrlimit(rlimit, (soft, hard))


def die_with_parent() -> None:
    """Linux: get SIGKILL when the server dies, so no kernel outlives a killed server (bwrap does this too)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def show_open_figures() -> None:
    """After each execution: when the code switched matplotlib away from the inline backend (for example
    `matplotlib.use('Agg')`), the inline backend no longer sends the figures still open, so send them here, as it
    would, and close them. With the inline backend active this does nothing (it flushes its own figures)."""
    plt = sys.modules.get("matplotlib.pyplot")
    if plt is None:
        return
    try:
        import base64
        import io

        import matplotlib
        from IPython.display import publish_display_data

        if "inline" in matplotlib.get_backend():
            return
        for num in plt.get_fignums():
            fig = plt.figure(num)
            buf = io.BytesIO()
            fig.savefig(buf, format="png", bbox_inches="tight")
            publish_display_data({"image/png": base64.b64encode(buf.getvalue()).decode("ascii")})  # type: ignore[no-untyped-call]
        plt.close("all")
    except Exception as exc:  # a broken figure must not break the run's result
        print(f"(ci-mcp could not render an open figure: {type(exc).__name__}: {exc})", file=sys.stderr)


def tight_png_in_one_draw(fig: Any, dpi: float, pad_inches: float) -> bytes | None:
    """The PNG `savefig(bbox_inches="tight")` makes, from at most one draw: render the figure (unless pyplot just
    did), and when all it draws lies inside the figure, crop the rendered pixels to that box (plus the pad). None
    when it cannot (the content reaches outside the figure, another canvas): the caller then saves the usual way,
    which draws twice (once to measure, once to render) and so keeps such labels too (issue 12)."""
    import io

    import matplotlib
    import matplotlib.colors
    import matplotlib.image
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas: Any = fig.canvas  # matplotlib is untyped for mypy's strict mode
    if not isinstance(fig.canvas, FigureCanvasAgg) or dpi != fig.dpi:
        return None
    rc = matplotlib.rcParams
    if rc["savefig.transparent"] or rc["savefig.facecolor"] != "auto" or rc["savefig.edgecolor"] != "auto":
        return None
    # pyplot has usually drawn the figure already, after the cell ran (interactive mode): when nothing changed
    # since (not stale, same renderer, so same size and dpi), its pixels are the picture and no draw is needed.
    previous = getattr(canvas, "renderer", None)
    renderer = canvas.get_renderer()
    if fig.stale or renderer is not previous:
        canvas.draw()
        renderer = canvas.get_renderer()
    box = fig.get_tightbbox(renderer)
    width, height = fig.get_size_inches()
    slack = 0.5 / dpi  # half a pixel
    if box is None or box.x0 < -slack or box.y0 < -slack or box.x1 > width + slack or box.y1 > height + slack:
        return None
    box = box.padded(pad_inches)
    pixels = np.asarray(renderer.buffer_rgba())
    rows, cols = pixels.shape[:2]
    left, right = int(np.floor(box.x0 * dpi)), int(np.ceil(box.x1 * dpi))
    top, bottom = int(np.floor(rows - box.y1 * dpi)), int(np.ceil(rows - box.y0 * dpi))
    if right <= left or bottom <= top:
        return None
    # Where the pad reaches past the figure's edge, it is the figure's background, as savefig would paint it.
    background = np.array(matplotlib.colors.to_rgba(fig.get_facecolor()), dtype=float) * 255
    image = np.empty((bottom - top, right - left, 4), dtype=np.uint8)
    image[:] = np.round(background).astype(np.uint8)
    src_top, src_left = max(0, top), max(0, left)
    src_bottom, src_right = min(rows, bottom), min(cols, right)
    image[src_top - top : src_bottom - top, src_left - left : src_right - left] = pixels[
        src_top:src_bottom, src_left:src_right
    ]
    out = io.BytesIO()
    # zlib level 1: a third less to encode here and half the decode of the server's check, for ~35% more bytes
    matplotlib.image.imsave(out, image, format="png", origin="upper", dpi=dpi, pil_kwargs={"compress_level": 1})
    return out.getvalue()


def single_draw_inline_figures() -> None:
    """Make the inline backend's PNGs (IPython's `print_figure` with a tight bounding box) come from one draw."""
    from IPython.core import pylabtools

    usual: Any = pylabtools.print_figure

    def print_figure(fig: Any, fmt: str = "png", bbox_inches: Any = "tight", base64: bool = False, **kw: Any) -> Any:
        if fmt == "png" and bbox_inches == "tight" and not kw and (fig.axes or fig.lines):
            try:
                import matplotlib

                data = tight_png_in_one_draw(fig, fig.dpi, float(matplotlib.rcParams["savefig.pad_inches"]))
            except Exception:
                data = None
            if data is not None:
                return binascii.b2a_base64(data, newline=False).decode("ascii") if base64 else data
        return usual(fig, fmt, bbox_inches, base64, **kw)

    pylabtools.print_figure = print_figure


STREAM_FLUSH_BYTES = 64 * 1024
"""Buffered output past this many characters is sent at once (a single write is sent whole, as one frame)."""
FLUSH_SECONDS = 0.05
"""How often the flusher thread sends buffered output while code runs."""
_SIGINT = {signal.SIGINT}
_MASK = getattr(signal, "pthread_sigmask", None)  # POSIX only


def _encode(frame: dict[str, Any]) -> bytes:
    """One frame on the wire: a newline, the JSON object in ASCII (no raw newline inside), a newline."""
    return b"\n" + json.dumps(frame, default=str).encode("ascii") + b"\n"


def _bundle(data: dict[str, Any]) -> dict[str, Any]:
    """A mime bundle as JSON: bytes (images) in base64, as ipykernel's encode_images sends them."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, bytes):
            value = binascii.b2a_base64(value, newline=False).decode("ascii")
        out[str(key)] = value
    return out


class Channel:
    """The worker's end of the socket: frames out from any thread (one at a time, never cut by a KeyboardInterrupt:
    SIGINT waits while a frame is written), execute requests in on the main thread."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.lock = threading.Lock()
        self.execution = ""
        """The id of the execution output belongs to (the last one, between executions)."""
        self._pending = b""
        self.pid = os.getpid()

    def send(self, frame: dict[str, Any]) -> None:
        if os.getpid() != self.pid:
            return  # a process the code forked shares the socket: it never writes frames (its output goes to fds)
        data = _encode(frame)
        old = _MASK(signal.SIG_BLOCK, _SIGINT) if _MASK is not None else None
        try:
            with self.lock:
                self.sock.sendall(data)
        except OSError:
            os._exit(0)  # the server is gone
        finally:
            if old is not None and _MASK is not None:
                _MASK(signal.SIG_SETMASK, old)

    def output(self, frame: dict[str, Any]) -> None:
        frame["id"] = self.execution
        self.send(frame)

    def receive(self) -> dict[str, Any] | None:
        """The next frame from the server (None: the connection is closed)."""
        while b"\n" not in self._pending:
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                return None
            self._pending += chunk
        line, self._pending = self._pending.split(b"\n", 1)
        if not line.strip():
            return self.receive()
        value = json.loads(line)
        return value if isinstance(value, dict) else {}


class Streams:
    """Output of stdout and stderr in the order it was written: buffered, and sent as `stream` frames."""

    def __init__(self, channel: Channel) -> None:
        self.channel = channel
        self.lock = threading.RLock()
        self.pieces: list[tuple[str, list[str]]] = []
        """Runs of writes to one stream, in order; joined only when sent (a print is two writes)."""
        self.size = 0
        self.pid = os.getpid()

    def write(self, name: str, text: str) -> None:
        if os.getpid() != self.pid:  # a forked child (multiprocessing): through its file descriptors, which we read
            os.write(1 if name == "stdout" else 2, text.encode("utf-8", "replace"))
            return
        with self.lock:
            if self.pieces and self.pieces[-1][0] == name:
                self.pieces[-1][1].append(text)
            else:
                self.pieces.append((name, [text]))
            self.size += len(text)
            if self.size >= STREAM_FLUSH_BYTES:
                self.flush()

    def flush(self) -> None:
        if os.getpid() != self.pid:
            return
        with self.lock:
            pieces, self.pieces, self.size = self.pieces, [], 0
            for name, texts in pieces:
                text = "".join(texts)
                if text:
                    self.channel.output({"t": "stream", "name": name, "text": text})


class OutStream:
    """sys.stdout or sys.stderr of the kernel: text into `Streams`; fileno() is the captured descriptor."""

    encoding = "utf-8"
    errors = "replace"

    def __init__(self, streams: Streams, name: str, fd: int) -> None:
        self._streams, self.name, self._fd = streams, name, fd
        self.closed = False

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        self._streams.write(self.name, text)
        return len(text)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        self._streams.flush()

    def fileno(self) -> int:
        return self._fd

    def isatty(self) -> bool:
        return False

    def writable(self) -> bool:
        return True

    def readable(self) -> bool:
        return False

    def seekable(self) -> bool:
        return False


class Capture:
    """File descriptors 1 and 2 as pipes, read into `Streams`: by the flusher thread while code runs, and drained
    by the main thread at the end of each execution (so a run's `os.system` output arrives before its end)."""

    def __init__(self, streams: Streams) -> None:
        self.streams = streams
        self.lock = threading.Lock()
        self.readers: dict[int, tuple[str, Any]] = {}
        for fd, name in ((1, "stdout"), (2, "stderr")):
            read, write = os.pipe()
            os.dup2(write, fd)
            os.close(write)
            os.set_blocking(read, False)
            self.readers[read] = (name, codecs.getincrementaldecoder("utf-8")("replace"))

    def drain(self) -> None:
        with self.lock:
            for fd, (name, decoder) in self.readers.items():
                while True:
                    try:
                        data = os.read(fd, 1 << 16)
                    except (BlockingIOError, InterruptedError):
                        break
                    if not data:
                        break
                    text = decoder.decode(data)
                    if text:
                        self.streams.write(name, text)


class Flusher(threading.Thread):
    """Sends buffered output every FLUSH_SECONDS and reads the captured descriptors as they fill."""

    def __init__(self, streams: Streams, capture: Capture | None) -> None:
        super().__init__(name="ci-mcp-flusher", daemon=True)
        self.streams, self.capture = streams, capture

    def run(self) -> None:
        fds = list(self.capture.readers) if self.capture is not None else []
        while True:
            if fds:
                select.select(fds, [], [], FLUSH_SECONDS)
                if self.capture is not None:
                    self.capture.drain()
            else:
                threading.Event().wait(FLUSH_SECONDS)
            self.streams.flush()


def _no_input(prompt: str = "", *args: Any, **kwargs: Any) -> str:
    from IPython.core.error import StdinNotImplementedError

    raise StdinNotImplementedError("raw_input was called, but this frontend does not support input requests.")


def make_shell(channel: Channel, streams: Streams) -> Any:
    """The InteractiveShell whose outputs go to `channel`, made current (`get_ipython()`)."""
    from IPython.core.displayhook import DisplayHook
    from IPython.core.displaypub import DisplayPublisher
    from IPython.core.interactiveshell import InteractiveShell
    from traitlets.config import Config

    class Publisher(DisplayPublisher):
        def publish(
            self,
            data: Any,
            metadata: Any = None,
            source: Any = None,
            *,
            transient: Any = None,
            update: bool = False,
            **kwargs: Any,
        ) -> None:
            streams.flush()
            channel.output({"t": "display", "data": _bundle(data), "update": bool(update)})

        def clear_output(self, wait: bool = False) -> None:
            streams.flush()
            channel.output({"t": "clear", "wait": bool(wait)})

    class ResultHook(DisplayHook):
        data: dict[str, Any] | None = None

        def start_displayhook(self) -> None:
            self.data = None

        def write_output_prompt(self) -> None:
            pass

        def write_format_data(self, format_dict: Any, md_dict: Any = None) -> None:
            self.data = format_dict

        def finish_displayhook(self) -> None:
            streams.flush()
            if self.data:
                channel.output({"t": "result", "data": _bundle(self.data)})
            self.data = None

    class Shell(InteractiveShell):
        displayhook_class = ResultHook
        display_pub_class = Publisher

        def init_virtualenv(self) -> None:
            pass  # the kernel's Python is the environment (as ipykernel)

        def ask_exit(self) -> None:
            pass  # exit() and quit() keep the kernel and its state, as ipykernel did for ci-mcp (its payload unread)

        def _showtraceback(self, etype: Any, evalue: Any, stb: Any) -> None:
            streams.flush()
            channel.output({"t": "error", "ename": str(etype.__name__), "evalue": str(evalue), "traceback": list(stb)})

    config = Config()
    config.HistoryManager.enabled = False
    config.InteractiveShell.colors = "nocolor"
    config.InteractiveShell.autoindent = False
    shell = Shell.instance(config=config)
    return shell


ADDRESS_SUFFIX = ".address.json"
"""The name ending of the address file the server writes where it has no unix sockets (kernel.py's ADDRESS_NAME)."""


def connect(path: str) -> socket.socket:
    """The socket to the server: the unix socket at `path`, or the loopback port the address file at `path` names,
    greeted with the file's token."""
    if not path.endswith(ADDRESS_SUFFIX):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(path)
        return sock
    with open(path, encoding="ascii") as file:
        address = json.load(file)
    sock = socket.create_connection(("127.0.0.1", int(address["port"])))
    sock.sendall(_encode({"t": "hello", "token": str(address["token"])}))
    return sock


class Worker:
    """The kernel: runs each execute request in the shell and sends its outputs, then `done`."""

    def __init__(self, path: str) -> None:
        sock = connect(path)
        self.channel = Channel(sock)
        self.streams = Streams(self.channel)
        self.shell: Any = None

    def start(self) -> None:
        if _MASK is not None:
            _MASK(signal.SIG_BLOCK, _SIGINT)  # SIGINT only while code runs; every thread started here blocks it
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # between runs an interrupt comes too late: it is ignored
        log = os.dup(2)
        try:
            import faulthandler

            faulthandler.enable(file=log)  # a crash in native code is told in kernel.log
        except (ImportError, OSError, ValueError):
            pass
        capture = Capture(self.streams) if hasattr(os, "set_blocking") and sys.platform != "win32" else None
        self.capture = capture
        sys.stdout = OutStream(self.streams, "stdout", 1)
        sys.stderr = OutStream(self.streams, "stderr", 2)
        for key, value in (("TERM", "xterm-color"), ("PAGER", "cat"), ("GIT_PAGER", "cat")):
            os.environ[key] = value  # as ipykernel: no pager waits for a key
        self.shell = make_shell(self.channel, self.streams)
        self.shell.events.register("post_execute", show_open_figures)
        import builtins
        import getpass

        builtins.input = _no_input  # type: ignore[assignment]
        getpass.getpass = _no_input
        Flusher(self.streams, capture).start()
        self.channel.send({"t": "ready"})

    def serve(self) -> None:
        while True:
            try:
                request = self.channel.receive()
            except (OSError, ValueError):
                request = None
            except KeyboardInterrupt:  # tripped by a thread the code left running, just as the last run ended
                continue
            if request is None:
                return
            if request.get("t") == "execute":
                self.execute(str(request.get("id", "")), str(request.get("code", "")))

    def execute(self, run_id: str, code: str) -> None:
        self.channel.execution = run_id
        status = "error"
        _drop_pending_interrupts()
        try:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            if _MASK is not None:
                _MASK(signal.SIG_UNBLOCK, _SIGINT)
            try:
                result = self.shell.run_cell(code, store_history=True)
            finally:
                _end_of_a_forked_child(self.channel.pid)
                if _MASK is not None:
                    _MASK(signal.SIG_BLOCK, _SIGINT)
                # Ignored from here: a SIGINT already taken in but not yet raised is dropped, not raised below.
                signal.signal(signal.SIGINT, signal.SIG_IGN)
            status = "ok" if result.success else "error"
        except KeyboardInterrupt:  # an interrupt that came as the run ended
            _end_of_a_forked_child(self.channel.pid)
            status = "error"
        if self.capture is not None:
            self.capture.drain()
        self.streams.flush()
        self.channel.send({"t": "done", "id": run_id, "status": status})


def _drop_pending_interrupts() -> None:
    """A SIGINT sent between runs (a deadline or a cancelled call just as the last run ended) is not ignored by the
    kernel while this thread blocks it: it waits, pending, for a thread that takes it. When no thread the code left
    running took it (they block it too, or the session was frozen), it would interrupt the next run as soon as the
    signal is unblocked below. It belongs to no run: it is taken here, while still blocked, and dropped."""
    take = getattr(signal, "sigtimedwait", None)
    if take is None or _MASK is None:
        return
    try:
        while take(_SIGINT, 0) is not None:
            pass
    except OSError:
        pass


def _end_of_a_forked_child(worker_pid: int) -> None:
    """A process the code forked (os.fork) that reaches the end of the cell stops there: it must not go on as a
    second worker, reading the server's requests from the shared socket or answering for the worker. It waits, as
    under ipykernel (where it went on in a copy of the kernel's loop), until the stray check after the run ends it;
    the server then reaps it like every other stray, so no zombie is left counting against the process limit."""
    if os.getpid() == worker_pid:
        return
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        while True:
            signal.pause()
    finally:
        os._exit(0)


def main() -> None:
    die_with_parent()
    limits = json.loads(sys.argv[1])
    apply_limits(limits)
    os.umask(0o077)
    os.environ.setdefault("MPLBACKEND", "module://matplotlib_inline.backend_inline")  # as ipykernel: %matplotlib inline
    single_draw_inline_figures()
    worker = Worker(sys.argv[2])
    worker.start()
    worker.serve()


if __name__ == "__main__":
    main()
