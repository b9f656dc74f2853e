"""``make demo``: one real operation end to end on loopback; what its Python and TypeScript runs
share (:mod:`demo.__main__`, :mod:`demo.typescript`)."""

from __future__ import annotations

import sys
from pathlib import Path

from codeworker.loopback.github_stub import GitHubStub
from codeworker.loopback.gitserver import GitServer
from codeworker.loopback.redis_server import RedisServer

RESULT_TIMEOUT = 600
"""Seconds the demo waits for a job's result."""


def say(text: str) -> None:
    print(f"\033[1m==> {text}\033[0m", flush=True)


def fail(text: str) -> int:
    print(f"\033[1;31m==> DEMO FAILED: {text}\033[0m", file=sys.stderr, flush=True)
    return 1


def worker_env(
    root: Path, port: int, redis_server: RedisServer, git: GitServer, github: GitHubStub, token: str
) -> dict[str, str]:
    """The demo worker's environment: its private Redis, directories under ``root``, the loopback
    stand-ins, readable logs; a run adds its own settings (the model, the webhook, the sandbox)."""
    return {
        "REDIS_URL": redis_server.url,
        "PORT": str(port),
        "WORKSPACE_ROOT": str(root / "workspace"),
        "CODEWORKER_CACHE_ROOT": str(root / "cache"),
        "CODEWORKER_TRAJECTORY_DIR": str(root / "trajectories"),
        "CODEWORKER_METRICS_DIR": str(root / "metrics"),
        "GITHUB_TOKEN": token,
        "GITHUB_API_URL": github.url,
        "CODEWORKER_ALLOWED_REPOS": git.base_url,
        "CODEWORKER_LOG_FORMAT": "console",
        # The demo runs as whoever calls make; Celery's warning about root is noise here.
        "PYTHONWARNINGS": "ignore:You're running the worker with superuser",
    }
