"""What a benchmark runs codeworker against: a private redis-server, the loopback git server and the
GitHub stand-in, in a scratch directory removed afterwards; and real workers started on them."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from pydantic import SecretStr

from codeworker.config import Settings
from codeworker.loopback.github_stub import GitHubStub
from codeworker.loopback.gitserver import GitServer
from codeworker.loopback.redis_server import RedisServer, free_port
from codeworker.loopback.worker import WorkerProcess

TOKEN = "bench-token-0123456789"
"""The token the git server and the GitHub stand-in accept."""

QUEUE = "code-operation"


@dataclass(frozen=True)
class Stands:
    root: Path
    redis: RedisServer
    git: GitServer
    github: GitHubStub

    def settings(self) -> Settings:
        """In-process pipeline settings against these services."""
        return Settings(
            redis_url=self.redis.url,
            workspace_root=self.root / "ws",
            cache_root=self.root / "cache",
            github_token=SecretStr(TOKEN),
            github_api_url=self.github.url,
            allowed_repos=[self.git.base_url],
        )

    @contextmanager
    def worker(
        self, name: str, pythonpath: Sequence[Path] = (), celery_args: Sequence[str] = ()
    ) -> Iterator[WorkerProcess]:
        """A real ``codeworker worker`` (prefork, 2 processes) on these services."""
        process = WorkerProcess(
            {
                "REDIS_URL": self.redis.url,
                "WORKSPACE_ROOT": str(self.root / "ws"),
                "CODEWORKER_CACHE_ROOT": str(self.root / "cache"),
                "CODEWORKER_METRICS_DIR": str(self.root / "metrics"),
                "GITHUB_TOKEN": TOKEN,
                "GITHUB_API_URL": self.github.url,
                "CODEWORKER_ALLOWED_REPOS": self.git.base_url,
                "PORT": str(free_port()),
            },
            name=name,
            pythonpath=pythonpath,
            celery_args=celery_args,
        ).start()
        try:
            yield process
        finally:
            process.stop()


@contextmanager
def stands(name: str) -> Iterator[Stands]:
    root = Path(tempfile.mkdtemp(prefix=f"cw-bench-{name}-"))
    redis_server = RedisServer()
    redis_server.start()
    git = GitServer(root / "remote", TOKEN)
    git.start()
    github = GitHubStub(TOKEN).start()
    try:
        yield Stands(root, redis_server, git, github)
    finally:
        github.stop()
        git.stop()
        redis_server.close()
        shutil.rmtree(root, ignore_errors=True)
