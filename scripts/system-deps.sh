#!/usr/bin/env bash
# Installs the Debian packages ci-mcp uses (bubblewrap for the kernel sandbox) where this machine allows it.
# Without them ci-mcp still runs, unsandboxed, and says so loudly (`ci-mcp doctor`).
set -u
if command -v bwrap >/dev/null 2>&1; then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "ci-mcp: bubblewrap (bwrap) is not installed and apt-get is not available; kernels will run unsandboxed." >&2
  exit 0
fi
SUDO=""
if [ "$(id -u)" != "0" ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO="sudo -n"; else
    echo "ci-mcp: install bubblewrap for the kernel sandbox: sudo apt-get install bubblewrap" >&2
    exit 0
  fi
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq >/dev/null 2>&1 || true
$SUDO apt-get install -y -qq bubblewrap >/dev/null 2>&1 \
  || echo "ci-mcp: could not install bubblewrap; kernels will run unsandboxed." >&2
exit 0
