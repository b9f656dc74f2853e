"""Jobs opened on real worktrees with the real sandbox, for tests of the verification."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import redis
from pydantic import SecretStr

from codeworker.config import Settings
from codeworker.coordination.keys import Keys, repo_id
from codeworker.coordination.locks import FileLocks
from codeworker.git.mirrors import Mirrors
from codeworker.loopback.gitserver import GitServer
from codeworker.models import Job, Verification, parse_job
from codeworker.sandbox.checkout import Checkout
from codeworker.verification.verifier import Verifier
from tests.conftest import GITHUB_TOKEN

Open = Callable[..., tuple[Job, Checkout]]
"""``open_(operation_type, files, **job_fields)``: a new repository holding ``files``, checked
out; the job and its workspace."""


@contextmanager
def job_opener(tmp_path: Path, git_server: GitServer, redis_client: redis.Redis) -> Iterator[Open]:
    settings = Settings(
        workspace_root=tmp_path / "ws", cache_root=tmp_path / "cache", github_token=SecretStr(GITHUB_TOKEN)
    )
    mirrors = Mirrors(settings.workspace_root, settings.github_token, 5_000, 30_000)
    opened: list[tuple[Checkout, object]] = []

    def open_(operation_type: str, files: dict[str, str], **fields: object) -> tuple[Job, Checkout]:
        name = f"v{uuid.uuid4().hex[:8]}"
        url = git_server.create_repo("acme", name, files)
        job = parse_job(
            {"description": "verify me", "repository": {"url": url}, **fields},
            operation_type=operation_type,
            allowed_repos=[git_server.base_url],
            max_iterations_cap=10,
        )
        worktree = mirrors.checkout(url, "main", f"codeworker/{job.operation_id}", job.operation_id, "a1")
        locks = FileLocks(redis_client, Keys(), repo_id(url), job.operation_id, 30)
        box = Checkout(worktree, locks, settings, job.test_command)
        opened.append((box, worktree))
        return job, box

    try:
        yield open_
    finally:
        for box, worktree in opened:
            box.close()
            worktree.remove()  # type: ignore[attr-defined]


def write(box: Checkout, files: dict[str, str]) -> None:
    for path, content in files.items():
        target = box.root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content)


def verify(job: Job, box: Checkout, change: dict[str, str]) -> Verification:
    """The baseline, then ``change`` written, then the verdict."""
    verifier = Verifier(job, box)
    verifier.baseline()
    write(box, change)
    return verifier.verify()
