"""The kernel holds no privilege inside the sandbox, whatever uid the server runs as (CI runs it as root, the common
case in containers): it cannot remount or mount, chown, write any read-only bind, or make a new user namespace.
Each attempt is made from the kernel through the MCP client and must fail. That includes the host's sysctls: a
kernel of a root-started server is the host's uid 0 outside its namespaces, and /proc/sys grants writes by uid, not
capability (core_pattern names a program the host runs as root)."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Callable

import pytest
from mcp import Client

from ci_mcp.backends.local import sandbox
from ci_mcp.settings import Settings
from tests.conftest import all_text, assert_kernel_start, open_client, texts

BWRAP_OK, BWRAP_WHY = sandbox.bwrap_works()
needs_bwrap = pytest.mark.skipif(not BWRAP_OK, reason=f"bubblewrap unavailable: {BWRAP_WHY}")

ATTEMPTS = r"""
import ctypes, importlib.util, json, os, site, subprocess, sys
found = {}
def attempt(name, fn):
    try:
        fn()
        found[name] = "ALLOWED"
    except Exception as exc:
        found[name] = "denied: " + type(exc).__name__
def run(*argv):
    proc = subprocess.run(argv, capture_output=True, timeout=20)
    if proc.returncode != 0:
        raise PermissionError(proc.stderr.decode(errors="replace")[:80])
libc = ctypes.CDLL(None, use_errno=True)
def mount(src, target, fstype, flags):
    if libc.mount(src, target, fstype, ctypes.c_ulong(flags), None) != 0:
        raise OSError(ctypes.get_errno(), "mount")
MS_RDONLY, MS_REMOUNT, MS_BIND = 1, 32, 4096
status = dict(l.split(":\t", 1) for l in open("/proc/self/status").read().splitlines() if ":\t" in l)
found["uid"] = os.getuid()
found["cap_eff"] = status["CapEff"].strip()
found["cap_bnd"] = status["CapBnd"].strip()
roots = {"/usr", "/etc", "/opt/ci-mcp", sys.prefix, sys.base_prefix, os.path.dirname(os.__file__)}
roots.update(site.getsitepackages())
for root in sorted(roots):
    attempt("remount rw " + root, lambda r=root: mount(None, r.encode(), None, MS_REMOUNT | MS_BIND))
    attempt("create in " + root, lambda r=root: open(os.path.join(r, ".ci-mcp-probe"), "x").close())
pil = importlib.util.find_spec("PIL").origin
for path in (pil, os.__file__, "/etc/passwd", "/opt/ci-mcp/kernel_launcher.py", "/usr/bin/env"):
    attempt("append to " + path, lambda p=path: open(p, "a").close())
    attempt("chmod " + path, lambda p=path: os.chmod(p, 0o777))
os.makedirs("/tmp/m", exist_ok=True)
attempt("mount tmpfs", lambda: mount(b"none", b"/tmp/m", b"tmpfs", 0))
attempt("mount(8) remount /usr", lambda: run("mount", "-o", "remount,rw,bind", "/usr"))
open("/mnt/data/mine.txt", "w").close()
attempt("chown to root", lambda: os.chown("/mnt/data/mine.txt", 0, 0))
attempt("chown to another uid", lambda: os.chown("/mnt/data/mine.txt", 1234, 1234))
attempt("setuid(0)", lambda: os.setuid(0))
def rewrite(path):  # the value it has: harmless where it is allowed, which is what this looks for
    value = open(path).read()
    with open(path, "w") as f:
        f.write(value)
for path in ("/proc/sys/kernel/core_pattern", "/proc/sys/vm/overcommit_memory", "/proc/sys/kernel/hostname"):
    attempt("write " + path, lambda p=path: rewrite(p))
attempt("new user namespace", lambda: os.unshare(os.CLONE_NEWUSER))
attempt("unshare(1) -U", lambda: run("unshare", "-U", "true"))
print(json.dumps(found))
"""


@pytest.fixture(params=["zygote", "cold"])
async def sandboxed(make_settings: Callable[..., Settings], request: pytest.FixtureRequest) -> AsyncIterator[Client]:
    """A kernel forked by the zygote, and one started cold (its own bwrap)."""
    client, store = await open_client(make_settings(sandbox="bwrap", kernel_zygote=request.param == "zygote"))
    async with client:
        await assert_kernel_start(client, request.param)
        yield client
    store.close()


@pytest.mark.anyio
@needs_bwrap
async def test_the_kernel_has_no_privilege_whatever_uid_the_server_has(sandboxed: Client) -> None:
    result = await sandboxed.call_tool("run_code_analysis", {"code": ATTEMPTS})
    assert not result.is_error, all_text(result)
    found = json.loads(texts(result)[1])
    assert found.pop("uid") == sandbox.KERNEL_UID
    assert int(found.pop("cap_eff"), 16) == 0
    assert int(found.pop("cap_bnd"), 16) == 0
    allowed = [name for name, outcome in found.items() if outcome == "ALLOWED"]
    assert not allowed, f"server uid {os.geteuid()}: the kernel could {allowed}"
    assert len(found) >= 20, found  # every attempt above was made
    after = await sandboxed.call_tool("run_code_analysis", {"code": "print(6 * 7)"})
    assert "42" in all_text(after)


@needs_bwrap
def test_doctor_measures_the_kernels_privileges() -> None:
    ok, detail = sandbox.probe_privileges()
    assert ok, detail
    assert detail.startswith(f"kernel uid {sandbox.KERNEL_UID}, capabilities none, nested user namespaces denied")


def test_a_root_server_without_bubblewrap_refuses_to_run_kernels_as_root(monkeypatch: pytest.MonkeyPatch) -> None:
    from ci_mcp.errors import ConfigError

    monkeypatch.setattr(sandbox, "bwrap_works", lambda: (False, "bubblewrap (bwrap) is not installed"))
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    with pytest.raises(ConfigError, match="CI_MCP_SANDBOX=none"):
        sandbox.plan_sandbox("auto")
    assert sandbox.plan_sandbox("none").mode == "none"  # the operator's explicit choice stands
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert sandbox.plan_sandbox("auto").mode == "none"
