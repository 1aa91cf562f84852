"""Download the MCP registry's server.json schema that server.json's `$schema` names, into build/registry/.

`make test` runs this (like `make mcpb-cli`); tests/packaging/test_manifests.py validates server.json against it and
is skipped, saying why, where it could not be downloaded. Exits 0 either way: a missing schema is a skipped test,
not a failed build.
"""

from __future__ import annotations

import json
import sys
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TARGET = REPO / "build" / "registry" / "server.schema.json"


def main() -> int:
    url = json.loads((REPO / "server.json").read_text())["$schema"]
    if TARGET.exists() and json.loads(TARGET.read_text()).get("$id") == url:
        return 0
    try:
        with urllib.request.urlopen(url, timeout=20) as response:  # noqa: S310 (an https URL from server.json)
            body = response.read(2_000_000)
        schema = json.loads(body)
    except (OSError, ValueError) as exc:
        print(f"could not download the MCP registry schema {url} ({exc}): its test will be skipped", file=sys.stderr)
        return 0
    TARGET.parent.mkdir(parents=True, exist_ok=True)
    tmp = TARGET.with_suffix(".part")
    tmp.write_bytes(body)
    tmp.replace(TARGET)
    print(f"{TARGET.relative_to(REPO)}: {schema.get('$id', url)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
