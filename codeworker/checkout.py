"""The executor's view of a job's worktree: confined file access, commands, extra locks."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from codeworker.commands import CommandResult, run_command
from codeworker.locks import FileLocks
from codeworker.models import relative_path
from codeworker.repo_config import test_command_for
from codeworker.workspace import Worktree


class PathEscape(ValueError):
    """A path that would leave the checkout or reach into .git."""


class Checkout:
    """Implements :class:`executors.base.Workspace` over one job's worktree and locks."""

    def __init__(
        self, worktree: Worktree, locks: FileLocks, command_timeout: float, requested_test_command: str | None
    ) -> None:
        self._worktree = worktree
        self._locks = locks
        self._command_timeout = command_timeout
        self._requested_test_command = requested_test_command
        self._home = Path(tempfile.mkdtemp(prefix="cw-home-"))

    @property
    def root(self) -> Path:
        return self._worktree.path

    def resolve(self, path: str) -> Path:
        candidate = Path(path)
        if candidate.is_absolute():
            try:
                path = str(candidate.relative_to(self.root))
            except ValueError:
                raise PathEscape(f"{path} is outside the checkout") from None
        try:
            relative = relative_path(path)
        except ValueError as exc:
            raise PathEscape(str(exc)) from None
        # Resolve symlinks: a committed link pointing outside must not become a way out.
        real = (self.root / relative).resolve()
        root = self.root.resolve()
        if real != root and not real.is_relative_to(root):
            raise PathEscape(f"{path} resolves outside the checkout")
        if real.is_relative_to(root / ".git"):
            raise PathEscape(f"{path} points into .git")
        return real

    def relative(self, path: str) -> str:
        return str(self.resolve(path).relative_to(self.root.resolve()))

    def read_file(self, path: str) -> str:
        return self.resolve(path).read_text(encoding="utf-8", errors="replace")

    def write_file(self, path: str, content: str) -> None:
        target = self.resolve(path)
        self.lock(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content, encoding="utf-8")

    def lock(self, path: str) -> None:
        relative = self.relative(path)
        if relative not in self._locks.held:
            self._locks.acquire_one(relative)

    def run(self, command: str | Sequence[str], timeout: float | None = None) -> CommandResult:
        return run_command(command, self.root, timeout or self._command_timeout, self._home)

    def changed_files(self) -> list[str]:
        return self._worktree.changed_files()

    def test_command(self) -> str | None:
        return test_command_for(self.root, self._requested_test_command)

    def close(self) -> None:
        shutil.rmtree(self._home, ignore_errors=True)
