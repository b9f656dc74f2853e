"""What the sandbox tests share: checkouts in real worktrees of a real git server, and processes.

The ``env`` and ``checkout`` fixtures are defined here (a test module binds them to its own names to
use them: conftest.py has another ``env``); ``python_c`` runs the worker's interpreter inside the
sandbox, and ``processes_with`` and ``alive`` find what a command left running, through /proc.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from codeworker.loopback.gitserver import GitServer
from codeworker.sandbox.checkout import Checkout
from tests.conftest import GITHUB_TOKEN
from tests.support.checkouts import Checkouts, sandbox_settings


@pytest.fixture()
def env(tmp_path: Path, git_server: GitServer, redis_client: redis.Redis) -> Checkouts:
    return Checkouts.create(
        sandbox_settings(tmp_path, GITHUB_TOKEN, sandbox_memory_mb=512), git_server, redis_client
    )


@pytest.fixture()
def checkout(env: Checkouts) -> Iterator[Checkout]:
    worktree = env.worktree(env.repo())
    box = env.checkout(worktree)
    yield box
    box.close()
    worktree.remove()


def python_c(code: str) -> list[str]:
    return ["python", "-c", code]  # the worker's interpreter: first on the sandbox's PATH


def processes_with(marker: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if marker.encode() in cmdline:
                found.append(int(entry.name))
    return found


def alive(pid: int, marker: str) -> bool:
    """Still running ``marker``: a zombie waiting to be reaped, or a reused pid, is not."""
    try:
        os.kill(pid, 0)
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (ProcessLookupError, FileNotFoundError):
        return False
    return marker.encode() in cmdline
