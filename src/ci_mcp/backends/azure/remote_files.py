"""Which local file (FileStore id) is which Azure Files-API id, per project endpoint; kept on disk.

The map lives in `<data_dir>/azure/<endpoint key>.json`, written atomically, so a restarted server does not upload
a file again. An entry records the sha256 of the bytes uploaded, so a changed local file is never taken for the
remote one.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path


def endpoint_key(endpoint: str) -> str:
    return hashlib.sha256(endpoint.rstrip("/").lower().encode()).hexdigest()[:16]


class RemoteFiles:
    def __init__(self, data_dir: Path, endpoint: str) -> None:
        self.path = data_dir / "azure" / f"{endpoint_key(endpoint)}.json"
        self._lock = threading.Lock()
        self._map: dict[str, dict[str, str]] = {}
        try:
            loaded = json.loads(self.path.read_text())
            if isinstance(loaded, dict):
                self._map = {k: v for k, v in loaded.items() if isinstance(v, dict)}
        except (OSError, ValueError):
            self._map = {}

    def get(self, file_id: str, sha256: str) -> str | None:
        entry = self._map.get(file_id)
        if entry and entry.get("sha256") == sha256:
            return entry.get("remote_id")
        return None

    def put(self, file_id: str, sha256: str, remote_id: str) -> None:
        with self._lock:
            self._map[file_id] = {"remote_id": remote_id, "sha256": sha256}
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self._map))
            os.replace(tmp, self.path)
