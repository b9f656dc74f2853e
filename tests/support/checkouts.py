"""Real worktrees of the test git server and Checkouts over them, for sandbox-level tests."""

from __future__ import annotations

import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from pydantic import SecretStr

from codeworker.config import Settings
from codeworker.coordination.keys import Keys, repo_id
from codeworker.coordination.locks import FileLocks
from codeworker.git.mirrors import Mirrors
from codeworker.git.worktree import Worktree
from codeworker.loopback.gitserver import GitServer
from codeworker.sandbox.checkout import Checkout

FILES = {"README.md": "hello\n", "app.py": "def f():\n    return 1\n"}

needs_bwrap = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed")


def sandbox_settings(tmp_path: Path, github_token: str, **overrides: Any) -> Settings:
    """Settings whose workspace, cache and trajectories live under ``tmp_path``."""
    return Settings(
        workspace_root=tmp_path / "ws",
        cache_root=tmp_path / "cache",
        trajectory_dir=tmp_path / "trajectories",
        github_token=SecretStr(github_token),
        command_timeout=60,
        **overrides,
    )


@dataclass
class Checkouts:
    """Makes repositories on the git server, worktrees of them, and Checkouts over those."""

    settings: Settings
    mirrors: Mirrors
    git_server: GitServer
    redis: redis.Redis

    owner = "acme"

    @classmethod
    def create(cls, settings: Settings, git_server: GitServer, client: redis.Redis) -> Checkouts:
        return cls(
            settings,
            Mirrors(settings.workspace_root, settings.github_token, 5_000, 30_000),
            git_server,
            client,
        )

    def repo(self, files: dict[str, str] | None = None) -> str:
        return self.git_server.create_repo(self.owner, f"sb{uuid.uuid4().hex[:8]}", files or FILES)

    def worktree(self, url: str, operation_id: str | None = None) -> Worktree:
        operation_id = operation_id or f"op-{uuid.uuid4().hex[:8]}"
        return self.mirrors.checkout(url, "main", f"codeworker/{operation_id}", operation_id, "a1")

    def checkout(
        self, worktree: Worktree, test_command: str | None = None, settings: Settings | None = None
    ) -> Checkout:
        operation_id = worktree.name.rpartition(".")[0]  # the name is <operation id>.<attempt>
        locks = FileLocks(self.redis, Keys(), repo_id(worktree.url), operation_id, 30)
        return Checkout(worktree, locks, settings or self.settings, test_command)
