"""The tests' real workers: their environment, and the test-only executor plugins on their path."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from codeworker.loopback import worker
from codeworker.loopback.redis_server import free_port

PLUGINS = Path(__file__).resolve().parent.parent / "plugins"


def worker_environment(
    redis_url: str, workspace: Path, git_server: Any, github_stub: Any, token: str, api_key: str
) -> dict[str, str]:
    """What every end-to-end worker of the tests is started with: its Redis, its workspace, the
    loopback stand-ins and the canary credentials; a caller adds its own settings."""
    return {
        "REDIS_URL": redis_url,
        "WORKSPACE_ROOT": str(workspace),
        "GITHUB_TOKEN": token,
        "GITHUB_API_URL": github_stub.url,
        "ANTHROPIC_API_KEY": api_key,
        "CODEWORKER_ALLOWED_REPOS": git_server.base_url,
        "CODEWORKER_LOCK_WAIT": "1",
        # A worker stopped at the end of a module soft-shuts down for this long whenever Celery
        # still counts a request as its own; the default 30 s would be spent idle in every such stop.
        "CODEWORKER_SHUTDOWN_GRACE": "3",
        "CODEWORKER_LOG_FORMAT": "json",
        "PORT": str(free_port()),
    }


PLUGINS = Path(__file__).resolve().parent.parent / "plugins"


class WorkerProcess(worker.WorkerProcess):
    """A real worker that can also run the test-only executors (tests/plugins)."""

    def __init__(self, env: Mapping[str, str], name: str = "w1", concurrency: int = 2) -> None:
        super().__init__(env, name, concurrency, pythonpath=[PLUGINS])
