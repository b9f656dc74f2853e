"""The executor's view of a job's worktree: confined file access, sandboxed commands, extra locks."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from codeworker.commands import CommandResult
from codeworker.config import Settings
from codeworker.keys import repo_id
from codeworker.locks import FileLocks
from codeworker.models import relative_path
from codeworker.repo_config import setup_plan, test_command_for
from codeworker.sandbox import CacheMount, Sandbox, SetupCache, SetupFailed
from codeworker.workspace import Worktree

__all__ = ["Checkout", "PathEscape", "SetupFailed"]


class PathEscape(ValueError):
    """A path that would leave the checkout or reach into .git."""


def git_admin_dir(checkout: Path) -> Path | None:
    """The worktree's admin directory in the mirror (``.git`` is a file naming it), if any."""
    gitfile = checkout / ".git"
    if not gitfile.is_file():
        return None
    admin = Path(gitfile.read_text(encoding="utf-8").removeprefix("gitdir:").strip())
    return admin if admin.is_dir() else None


class Checkout:
    """Implements :class:`executors.base.Workspace` over one job's worktree and locks.

    Every command runs in the job's :class:`~codeworker.sandbox.Sandbox`; after :meth:`setup`,
    commands also see the repository's cached setup result (read-only).
    """

    def __init__(
        self,
        worktree: Worktree,
        locks: FileLocks,
        settings: Settings,
        requested_test_command: str | None,
    ) -> None:
        self._worktree = worktree
        self._locks = locks
        self._settings = settings
        self._requested_test_command = requested_test_command
        self._scratch = Path(tempfile.mkdtemp(prefix="cw-scratch-"))
        # Mirrors keeps worktrees at <root>/worktrees/<operation id>; hide that root as well as the
        # configured one, so no other job's checkout or mirror is visible.
        roots = [worktree.path.parent.parent, settings.workspace_root]
        self._sandbox = Sandbox.for_checkout(
            settings, worktree.path, roots, git_admin_dir(worktree.path), self._scratch
        )

    @property
    def root(self) -> Path:
        return self._worktree.path

    @property
    def scratch(self) -> Path:
        return self._scratch

    @property
    def sandbox(self) -> Sandbox:
        return self._sandbox

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

    def run(
        self, command: str | Sequence[str], timeout: float | None = None, env: Mapping[str, str] | None = None
    ) -> CommandResult:
        return self._sandbox.run(command, timeout, env)

    def setup(self) -> CommandResult | None:
        """Run the repository's setup once, with network, before the model sees anything.

        None when there is nothing to set up or an earlier job's result for the same dependency
        files is reused. Raises :class:`SetupFailed` (with the output's tail) when setup fails.
        """
        plan = setup_plan(self.root)
        if plan is None:
            return None
        cache = SetupCache(self._settings.cache_root, repo_id(self._worktree.url))
        key = plan.cache_key(self.root)
        ready = cache.ready(key)
        if ready is not None:
            self._use_cache(ready)
            return None
        with cache.building(key) as build:
            if build is None:
                self._use_cache(cache.entry(key))
                return None
            result = self._sandbox.with_cache(build.mount).run(
                plan.command, self._settings.setup_timeout, network=True
            )
            if not result.ok:
                raise SetupFailed(result)
            published = build.publish()
        if published is not None:
            self._use_cache(published)
        return result

    def _use_cache(self, entry: Path) -> None:
        self._sandbox = self._sandbox.with_cache(CacheMount(entry, entry))

    def changed_files(self) -> list[str]:
        return self._worktree.changed_files()

    def test_command(self) -> str | None:
        return test_command_for(self.root, self._requested_test_command)

    def close(self) -> None:
        shutil.rmtree(self._scratch, ignore_errors=True)
