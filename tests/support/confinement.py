"""Jobs' checkouts with the agent's tools over them, on repositories that may commit symbolic links
as a hostile repository would ship them, for the confinement tests. Its fixtures (``env``,
``open_job``) are bound by name in each confinement module, not in conftest, so other modules keep
their own fixtures of the same names."""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from codeworker.executors.agent.tools import EDITOR, ToolResult, Tools
from codeworker.git.worktree import Worktree
from codeworker.loopback.gitserver import GitServer
from codeworker.sandbox.checkout import Checkout
from tests.conftest import GITHUB_TOKEN
from tests.support.checkouts import Checkouts, sandbox_settings

SECRET = "cwcanary-outside-secret-7c41d0"
"""Content of every file outside the checkout that a test tries to reach."""

AWS_KEY = "AKIA" + "QYLPMN5HHHFPZAM2"
AUTHOR = ("codeworker", "codeworker@example.invalid")
IDENTITY = {
    "GIT_AUTHOR_NAME": "hostile",
    "GIT_AUTHOR_EMAIL": "hostile@example.invalid",
    "GIT_COMMITTER_NAME": "hostile",
    "GIT_COMMITTER_EMAIL": "hostile@example.invalid",
}


def _git(repo: Path, *args: str, stdin: bytes = b"", env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        ["git", *args],
        cwd=repo,
        input=stdin,
        capture_output=True,
        env={**os.environ, **IDENTITY, **(env or {})},
        check=True,
    )
    return done.stdout.decode()


def commit_links(server: GitServer, owner: str, name: str, links: dict[str, str]) -> None:
    """Commit symbolic links (path -> target) on ``main`` of a server repository, with plumbing:
    the links are in the repository itself, as a hostile repository would have them."""
    repo = server.repo_path(owner, name)
    parent = server.ref_sha(owner, name, "main")
    assert parent is not None
    with tempfile.TemporaryDirectory() as tmp:
        env = {"GIT_INDEX_FILE": str(Path(tmp) / "index")}
        _git(repo, "read-tree", parent, env=env)
        entries = ""
        for path, target in links.items():
            blob = _git(repo, "hash-object", "-w", "--stdin", stdin=target.encode()).strip()
            entries += f"120000 {blob}\t{path}\n"
        _git(repo, "update-index", "--index-info", stdin=entries.encode(), env=env)
        tree = _git(repo, "write-tree", env=env).strip()
        sha = _git(repo, "commit-tree", tree, "-p", parent, "-m", "links").strip()
        _git(repo, "update-ref", "refs/heads/main", sha, parent)


@dataclass
class Env(Checkouts):
    outside: Path
    """A directory outside every checkout holding ``secret.txt`` (content: SECRET)."""

    def repo(self, files: dict[str, str] | None = None, links: dict[str, str] | None = None) -> str:
        url = super().repo(files)
        if links:
            commit_links(self.git_server, self.owner, url.rsplit("/", 1)[1].removesuffix(".git"), links)
        return url


@dataclass
class OpenJob:
    """One job's checkout with the agent's tools over it."""

    worktree: Worktree
    checkout: Checkout
    tools: Tools

    @property
    def root(self) -> Path:
        return self.worktree.path

    def edit(self, **tool_input: object) -> ToolResult:
        return self.tools.call(EDITOR, tool_input)

    def bash(self, command: str) -> str:
        return self.checkout.run(command).output


def refused(result: ToolResult, *words: str) -> bool:
    return result.is_error and all(word in result.text for word in words)


def commit_and_push(worktree: Worktree) -> str:
    sha = worktree.commit("agent's change", *AUTHOR)
    assert sha is not None
    worktree.push()
    return sha


def server_name(worktree: Worktree) -> str:
    return worktree.url.rstrip("/").rsplit("/", 1)[-1].removesuffix(".git")


@pytest.fixture()
def env(tmp_path: Path, git_server: GitServer, redis_client: redis.Redis) -> Env:
    """Checkouts for the confinement tests, and a directory outside them all holding a secret."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text(SECRET + "\n")
    base = Checkouts.create(
        sandbox_settings(tmp_path, GITHUB_TOKEN, sandbox_memory_mb=1024), git_server, redis_client
    )
    return Env(base.settings, base.mirrors, base.git_server, base.redis, outside)


@pytest.fixture()
def open_job(env: Env) -> Iterator[Callable[..., OpenJob]]:
    """Opens jobs on fresh repositories (files and committed links); cleans every one up."""
    opened: list[OpenJob] = []

    def open_(
        files: dict[str, str] | None = None,
        links: dict[str, str] | None = None,
        test_command: str | None = None,
    ) -> OpenJob:
        worktree = env.worktree(env.repo(files, links))
        checkout = env.checkout(worktree, test_command)
        job = OpenJob(worktree, checkout, Tools(checkout, 20_000, 100_000))
        opened.append(job)
        return job

    yield open_
    for job in opened:
        job.checkout.close()
        job.worktree.remove()
