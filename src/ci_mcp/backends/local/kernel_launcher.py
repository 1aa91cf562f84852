"""Entry point of a kernel process: apply resource limits, then become an ipykernel.

Run as `python -m ci_mcp.backends.local.kernel_launcher <limits-json> -f <connection-file>`. It imports nothing
from ci_mcp besides this file, so it works inside the sandbox with only the Python environment mounted.
"""

from __future__ import annotations

import binascii
import json
import os
import sys
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


def main() -> None:
    die_with_parent()
    limits = json.loads(sys.argv[1])
    apply_limits(limits)
    os.umask(0o077)
    single_draw_inline_figures()
    from ipykernel.kernelapp import IPKernelApp
    from traitlets.config import Config

    app = IPKernelApp.instance()
    # ipykernel sleeps 0.5 ms after every execution so that output on iopub tends to arrive before the reply on
    # shell. A run here ends at the `idle` status on iopub, which the kernel publishes after the run's output on the
    # same socket, so that order holds without the sleep (issue 12).
    config = Config()
    config.IPythonKernel._execute_sleep = 0.0
    app.update_config(config)
    app.initialize(sys.argv[2:])  # type: ignore[no-untyped-call]
    if app.shell is not None:
        app.shell.events.register("post_execute", show_open_figures)
    app.start()  # type: ignore[no-untyped-call]


if __name__ == "__main__":
    main()
