"""The trajectory: every request, response and tool result of a job, as JSON lines.

Entries are scrubbed of registered secrets (``codeworker.logs.scrub``) and never hold HTTP headers,
so neither the API key nor the GitHub token can reach the file. ``codeworker.replay`` serves the
recorded responses back to the real SDK.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

from codeworker import logs


class Trajectory:
    """Appends one JSON object a line to ``<directory>/<operation_id>.jsonl``."""

    def __init__(self, directory: Path, operation_id: str) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / f"{operation_id}.jsonl"
        self._file = self.path.open("w", encoding="utf-8")
        self._lock = threading.Lock()

    def record(self, kind: str, **data: Any) -> None:
        line = logs.scrub(json.dumps({"kind": kind, "ts": round(time.time(), 3), **data}, default=str))
        with self._lock:
            self._file.write(line + "\n")
            self._file.flush()

    def close(self) -> None:
        self._file.close()


def read_trajectory(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
