"""The executor's view of a job's worktree: confined file access, sandboxed commands, extra locks."""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from codeworker.config import Settings
from codeworker.coordination.cancellations import CancelSignal
from codeworker.coordination.keys import repo_id
from codeworker.coordination.locks import FileLocks
from codeworker.git.worktree import BaseFile, Worktree
from codeworker.models import Verification
from codeworker.names import relative_path, shown
from codeworker.profiles import Profile, choose_profile
from codeworker.sandbox.bubblewrap import GitView, Sandbox
from codeworker.sandbox.commands import CommandResult
from codeworker.sandbox.repo_config import load_repo_config
from codeworker.sandbox.setup_cache import CacheMount, SetupCache, SetupFailed

if TYPE_CHECKING:
    from codeworker.verification.verifier import Verifier

__all__ = ["Checkout", "PathEscape", "UnusablePath"]

NAME_MAX = 255
"""Bytes in one file name (Linux): a longer one fails deep inside open() with a bare ENAMETOOLONG."""

MAX_DEPTH = 100
"""Parts in a path, file name included: libgit2 refuses to stage a tree nested 100 directories deep."""


class PathEscape(ValueError):
    """A path that would leave the checkout or reach into .git."""


class UnusablePath(OSError):
    """A path inside the checkout that the editor cannot use: too long, too deep, or not a
    regular file (a FIFO would block the worker in open() forever)."""


def git_admin_dir(checkout: Path) -> Path | None:
    """The worktree's admin directory in the mirror (``.git`` is a file naming it), if any.

    Only read when the :class:`Checkout` is made, before any command of the job ran: later the
    agent may have rewritten the file.
    """
    gitfile = checkout / ".git"
    if not gitfile.is_file():
        return None
    admin = Path(gitfile.read_text(encoding="utf-8").removeprefix("gitdir:").strip())
    return admin if admin.is_dir() else None


def _restore(copy: Path, path: str, content: BaseFile | None) -> None:
    """Put ``path`` in ``copy`` as the base commit has it, never through a link the change made."""
    target = copy / path
    if not target.parent.resolve().is_relative_to(copy.resolve()):
        raise PathEscape(f"{shown(path)} lies under a link out of the checkout")
    if target.is_dir() and not target.is_symlink():
        shutil.rmtree(target)
    else:
        target.unlink(missing_ok=True)
    if content is None:
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    if content.symlink:
        target.symlink_to(os.fsdecode(content.data))
    else:
        target.write_bytes(content.data)


def _kind(mode: int) -> str | None:
    """What a non-regular, non-directory file is, for an error message; None for a regular file."""
    kinds = {stat.S_ISFIFO: "FIFO", stat.S_ISSOCK: "socket", stat.S_ISCHR: "device", stat.S_ISBLK: "device"}
    return next((name for test, name in kinds.items() if test(mode)), None)


class Checkout:
    """Implements :class:`codeworker.executors.base.Workspace` over one job's worktree and locks.

    Every command runs in the job's :class:`~codeworker.sandbox.bubblewrap.Sandbox`; after :meth:`setup`,
    commands also see the repository's cached setup result (read-only).
    """

    def __init__(
        self,
        worktree: Worktree,
        locks: FileLocks,
        settings: Settings,
        requested_test_command: str | None,
        cancel: CancelSignal | None = None,
    ) -> None:
        """``cancel``: the job's cancellation, which kills a running command and stops the next."""
        self._worktree = worktree
        self._cancel = cancel
        self.verifier: Verifier | None = None
        """Set by the worker once it took the baseline; :meth:`verify` asks it."""
        self.verifications = 0
        """Calls of :meth:`verify` so far: one per executor iteration, then the worker's own."""
        self.on_verify: Callable[[int], None] | None = None
        """Told the count at each :meth:`verify` call (a revision's progress on its PR)."""
        self._locks = locks
        self._settings = settings
        self._requested_test_command = requested_test_command
        # The repository's settings are those of the base commit: read now, before any command
        # runs, so the agent cannot swap the test command the verification trusts.
        self._repo_config = load_repo_config(worktree.path)
        self.profile: Profile = choose_profile(worktree.path, self._repo_config, requested_test_command)
        """The repository's language profile (:mod:`codeworker.profiles`), chosen from the base
        commit like the settings."""
        self._scratch = Path(tempfile.mkdtemp(prefix="cw-scratch-"))
        admin = git_admin_dir(worktree.path)
        self._git_view = GitView.of(admin) if admin is not None else None
        # Mirrors keeps worktrees at <root>/worktrees/<operation id>; hide that root as well as the
        # configured one, so no other job's checkout or mirror is visible.
        self._hidden_roots = [worktree.path.parent.parent, settings.workspace_root]
        self._sandbox = Sandbox.for_checkout(
            settings, worktree.path, self._hidden_roots, self._git_view, self._scratch, cancel
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
                raise PathEscape(f"{shown(path)} is outside the checkout") from None
        if path and not PurePosixPath(path).parts:  # ".": the checkout itself (a directory listing)
            return self.root.resolve()
        try:
            relative = relative_path(path)
        except ValueError as exc:
            raise PathEscape(str(exc)) from None
        parts = PurePosixPath(relative).parts
        if len(parts) > MAX_DEPTH:
            raise UnusablePath(f"{shown(path)} is {len(parts)} levels deep; git stages at most {MAX_DEPTH}")
        if any(len(part.encode()) > NAME_MAX for part in parts):
            raise UnusablePath(
                f"{shown(path)} has a name longer than {NAME_MAX} bytes, the file system's limit"
            )
        # Resolve symlinks: a committed link pointing outside must not become a way out.
        try:
            real = (self.root / relative).resolve()
        except RuntimeError:  # pathlib's report of a symlink loop
            raise UnusablePath(f"{shown(path)} is a loop of symbolic links") from None
        root = self.root.resolve()
        if real != root and not real.is_relative_to(root):
            raise PathEscape(f"{shown(path)} resolves outside the checkout")
        if real.is_relative_to(root / ".git"):
            raise PathEscape(f"{shown(path)} points into .git")
        return real

    def relative(self, path: str) -> str:
        return str(self.resolve(path).relative_to(self.root.resolve()))

    def _regular_file(self, path: str) -> Path:
        """:meth:`resolve`, refusing anything that exists and is neither a regular file nor a
        directory: reading or writing a FIFO the agent made would block the worker for good."""
        real = self.resolve(path)
        try:
            kind = _kind(real.stat().st_mode)
        except FileNotFoundError:
            return real
        if kind is not None:
            raise UnusablePath(
                f"{shown(path)} is a {kind}, not a regular file; the editor uses regular files only"
            )
        return real

    def read_file(self, path: str) -> str:
        return self._regular_file(path).read_text(encoding="utf-8", errors="replace")

    def write_file(self, path: str, content: str) -> None:
        target = self._regular_file(path)
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
        self.stop_if_cancelled()
        try:
            result = self._sandbox.run(command, timeout, {**self.profile.environment, **(env or {})})
        finally:
            self._clear_scratch()
        self.stop_if_cancelled()  # the command was killed for it
        return result

    def stop_if_cancelled(self) -> None:
        if self._cancel is not None:
            self._cancel.raise_if_set()

    def verify(self) -> Verification:
        if self.verifier is None:
            raise RuntimeError("the worker verifies a change only after it took the baseline")
        self.verifications += 1
        if self.on_verify is not None:
            self.on_verify(self.verifications)
        return self.verifier.verify()

    def run_on_base(
        self,
        command: str,
        revert: Callable[[str], bool],
        env: Mapping[str, str] | None = None,
        inspect: Callable[[Path], None] | None = None,
    ) -> CommandResult:
        """A copy of the checkout (without ``.git``), with the reverted paths written from the base
        commit, run in a sandbox of its own with the same setup result, then removed; ``inspect``
        is called with the copy after the command (a report the command wrote there)."""
        self.stop_if_cancelled()
        base = self._worktree.base_contents([path for path in self.changed_files() if revert(path)])
        copy = Path(tempfile.mkdtemp(prefix="cw-base-"))
        try:
            shutil.copytree(
                self.root, copy, symlinks=True, ignore=shutil.ignore_patterns(".git"), dirs_exist_ok=True
            )
            for path, content in base.items():
                _restore(copy, path, content)
            sandbox = Sandbox.for_checkout(
                self._settings, copy, self._hidden_roots, None, self._scratch, self._cancel, self._sandbox.etc
            )
            result = sandbox.with_cache(self._sandbox.cache).run(command, None, env)
            if inspect is not None:
                inspect(copy)
        finally:
            shutil.rmtree(copy, ignore_errors=True)
            self._clear_scratch()
        self.stop_if_cancelled()
        return result

    def setup(self) -> CommandResult | None:
        """Run the repository's setup once, with network (``setup_network``), before the model
        sees anything.

        None when there is nothing to set up or an earlier job's result for the same dependency
        files is reused. Raises :class:`SetupFailed` (with the output's tail) when setup fails.
        """
        plan = self.profile.setup
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
            try:
                result = self._sandbox.with_cache(build.mount(self.profile.cache_dirs)).run(
                    plan.command, self._settings.setup_timeout, network=self._settings.setup_network
                )
            finally:
                self._clear_scratch()
            self.stop_if_cancelled()
            if not result.ok:
                raise SetupFailed(result)
            for name in self.profile.private_dirs:  # mount points for later commands' own copies
                path = build.source / name
                # What setup (the repository's code) left there is never followed out of the entry.
                if not path.is_symlink() and not path.parent.is_symlink() and path.parent.is_dir():
                    with contextlib.suppress(OSError):  # a file of that name: no private copy
                        path.mkdir(exist_ok=True)
            published = build.publish()
        if published is not None:
            self._use_cache(published)
        return result

    def _use_cache(self, entry: Path) -> None:
        shown = tuple(name for name in self.profile.cache_dirs if (entry / name).is_dir())
        private = tuple(name for name in self.profile.private_dirs if (entry / name).is_dir())
        mount = CacheMount(entry, entry, checkout_dirs=shown, private_dirs=private)
        self._sandbox = self._sandbox.with_cache(mount)

    def _clear_scratch(self) -> None:
        """Remove whatever a command left at the top of scratch that is neither a regular file nor a
        directory. The worker writes and reads fixed names there (test reports, the coverage
        plugin) outside the sandbox: a symlink planted under one of them would have it overwrite or
        read a host file, and a FIFO would block it."""
        for entry in self._scratch.iterdir():
            if entry.is_symlink() or not (entry.is_file() or entry.is_dir()):
                entry.unlink(missing_ok=True)

    def changed_files(self) -> list[str]:
        return self._worktree.changed_files()

    def test_command(self) -> str | None:
        """The job's command, else the repository's, else the profile's detected one."""
        return self._requested_test_command or self._repo_config.test_command or self.profile.test_command

    def close(self) -> None:
        shutil.rmtree(self._scratch, ignore_errors=True)
        self._sandbox.etc.remove()
        if self._git_view is not None:
            self._git_view.remove()
