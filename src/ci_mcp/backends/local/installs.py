"""Package installs from inside a sandboxed kernel: they cannot work (no network, the Python environment is
mounted read-only), so a run that asks for one is refused before it starts, with what to do instead.

Recognised: IPython's `%pip` / `%conda` / `%mamba` / `%uv` magics and shell lines (`!pip install`, `!python -m
pip install`, `!uv pip install`, `!conda install`). A `subprocess` call to pip is not recognised: it fails on its
own, without network.
"""

from __future__ import annotations

import re

_INSTALL = re.compile(
    r"^[ \t]*(?:%{1,2}|!{1,2})[ \t]*(?:pip3?|python3?[ \t]+-m[ \t]+pip|uv[ \t]+pip|conda|mamba|micromamba)"
    r"[ \t]+install\b.*$",
    re.MULTILINE,
)

HOW_TO_ADD = (
    "To give kernels more packages, the operator installs them into a virtual environment that also has IPython "
    "and points CI_MCP_KERNEL_PYTHON at its python (or installs them into ci-mcp's own environment, e.g. "
    "`uv tool install ci-mcp --with PACKAGE` or `pipx inject ci-mcp PACKAGE`), then restarts the server."
)


def install_line(code: str) -> str | None:
    """The first line of `code` that installs packages, or None."""
    found = _INSTALL.search(code)
    return found.group(0).strip() if found else None


def refusal(line: str, libraries: str) -> str:
    """What the calling model reads when `line` asked for an install in the sandbox."""
    return (
        f"Packages cannot be installed here: `{line[:200]}` needs the network, and the kernel's sandbox has none "
        "(its Python environment is read-only too). Nothing of this call ran; the session and its variables are "
        f"unchanged. Use what the kernel has: {libraries} Remove the install line and run the code again. " + HOW_TO_ADD
    )
