"""The git workspace: one shared bare mirror per repository, one worktree per job.

Why this shape:

- A mirror per repository means a second job on the same repository fetches a few objects instead of
  cloning again. Several worker processes on one machine share ``WORKSPACE_ROOT``, so every fetch and
  every worktree creation or removal runs under an exclusive ``flock`` on a file next to the mirror.
- The mirror's fetch refspec is ``+refs/heads/*:refs/remotes/origin/*``: job branches live as local
  ``refs/heads/*`` and a fetch can never clobber them (:mod:`codeworker.git.remote`).
- Fetches coalesce: a job that waited for the mirror lock while another process fetched skips its
  own fetch when that fetch began after the job asked (it saw everything this one would have).
  Many jobs on one repository then hold the lock for one fetch between them, not one each.
- Network operations authenticate through :mod:`codeworker.git.auth`; what a job does in its
  checkout is :mod:`codeworker.git.worktree`.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pygit2
from pydantic import SecretStr
from pygit2.enums import FetchPrune

from codeworker.coordination.keys import repo_id
from codeworker.git.auth import GitAuth, Lease, SizeLimitedFetch, set_timeouts
from codeworker.git.errors import (
    AuthenticationFailed,
    BaseBranchMissing,
    GitError,
    InvalidRepository,
    PushRejected,
    RepositoryTooLarge,
)
from codeworker.git.remote import FETCH_REFSPEC, REMOTE, clean_url, remote_tip
from codeworker.git.retries import DEFAULT_RETRIES, GitRetries
from codeworker.git.worktree import Worktree
from codeworker.names import is_operation_id

__all__ = ["Mirrors"]

FETCHED = "codeworker-fetched"
"""File in a mirror holding when its last completed fetch began (``time.time()``)."""

_SAFE_SEGMENT = re.compile(r"^[a-z0-9][a-z0-9._:-]*$")
# libgit2 1.9 messages when it refuses a non-forced push whose remote ref moved on.
_NON_FAST_FORWARD_HINTS = ("non-fastforwardable", "non-fast-forward", "not present locally")


def _mirror_relpath(url: str) -> Path:
    """``host/owner/name.git`` for a URL, refusing anything that could escape the mirrors root."""
    segments = repo_id(url).split("/")
    # host, owner (or group path), name: a bare host or a one-level path is not a repository.
    if len(segments) < 3 or not all(_SAFE_SEGMENT.match(s) and ".." not in s for s in segments):
        raise InvalidRepository(f"repository URL has an unusable path: {repo_id(url)!r}")
    *parents, name = segments
    return Path(*parents, f"{name}.git")


@contextmanager
def _flock(path: Path) -> Iterator[None]:
    """An exclusive lock between processes *and* threads (each call opens its own file description)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


class Mirrors:
    """The bare mirrors and job worktrees under one workspace root."""

    def __init__(
        self,
        root: Path,
        token: SecretStr | str,
        connect_timeout_ms: int = 10_000,
        read_timeout_ms: int = 120_000,
        max_repo_bytes: int = 0,
        retries: GitRetries = DEFAULT_RETRIES,
    ) -> None:
        self.root = Path(root)
        self._token = token if isinstance(token, SecretStr) else SecretStr(token)
        self.max_repo_bytes = max_repo_bytes
        """Largest repository accepted, in bytes of git objects and of checked-out files; 0: any."""
        self.retries = retries
        """How often a fetch or push that met a transient failure is tried again."""
        set_timeouts(connect_timeout_ms, read_timeout_ms)

    def __repr__(self) -> str:
        return f"Mirrors(root={self.root!r})"

    # -- paths ------------------------------------------------------------------------------------

    def mirror_path(self, url: str) -> Path:
        return self.root / "mirrors" / _mirror_relpath(url)

    def worktree_path(self, operation_id: str, attempt: str) -> Path:
        """Where one attempt of an operation checks out: a path of its own, so an attempt never
        removes or writes the worktree of another attempt of the same operation."""
        return self.root / "worktrees" / _worktree_name(operation_id, attempt)

    def _lock_path(self, mirror: Path) -> Path:
        return mirror.with_name(mirror.name + ".lock")

    @contextmanager
    def locked(self, url: str) -> Iterator[Path]:
        """Hold the repository's mirror lock; yields the mirror path."""
        mirror = self.mirror_path(url)
        with _flock(self._lock_path(mirror)):
            yield mirror

    # -- public -----------------------------------------------------------------------------------

    def checkout(self, url: str, base: str, branch: str, operation_id: str, attempt: str) -> Worktree:
        """Fetch, then give one ``attempt`` of the operation a fresh worktree, on a local branch of
        its own starting at ``origin/base``, that pushes to ``branch``.

        The worktree and the local branch are named for the attempt, so a superseded attempt of
        the same operation (still running, or dead with leftovers that its journal entry lets the
        next worker clean) never shares them. The remote's ``branch`` as this fetch saw it is what
        the push expects to replace (:meth:`Worktree.push`).
        """
        _check_branch(branch)
        _check_branch(base)
        name = _worktree_name(operation_id, attempt)
        local = _local_branch(branch, attempt)
        path = self.worktree_path(operation_id, attempt)
        asked = time.time()
        with self.locked(url) as mirror:
            repo = self._open_or_init(mirror, url)
            self._fetch(repo, url, unless_fetched_since=asked)
            base_commit = remote_tip(repo, base)
            if base_commit is None:
                raise BaseBranchMissing(clean_url(url), base)
            self._check_checkout_size(repo, repo[base_commit].peel(pygit2.Tree), url)
            seen = remote_tip(repo, branch)
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                repo.create_branch(local, repo[base_commit], True)
            except pygit2.GitError as exc:
                raise GitError(f"cannot create worktree for {branch}: {exc}") from exc
            _add_worktree(mirror, path, local, branch)
        return Worktree(
            self,
            url,
            path,
            branch=branch,
            base=base,
            base_commit=str(base_commit),
            name=name,
            local_branch=local,
            seen=None if seen is None else str(seen),
        )

    def fetch(self, url: str, unless_fetched_since: float | None = None) -> None:
        """Bring the mirror of ``url`` up to date (creating it on first use); with
        ``unless_fetched_since``, only if no fetch begun since then has completed."""
        with self.locked(url) as mirror:
            self._fetch(self._open_or_init(mirror, url), url, unless_fetched_since)

    # -- used by Worktree -------------------------------------------------------------------------

    def auth(self) -> GitAuth:
        return GitAuth(self._token)

    def _open_or_init(self, mirror: Path, url: str) -> pygit2.Repository:
        """Open the mirror, creating it on first use. Caller holds the lock.

        Also repairs what a worker killed mid-way may have left: a mirror without its remote,
        and git's own ``*.lock`` files on refs that only lock holders write.
        """
        if (mirror / "HEAD").exists():
            repo = pygit2.Repository(str(mirror))
        else:
            mirror.parent.mkdir(parents=True, exist_ok=True)
            repo = pygit2.init_repository(str(mirror), bare=True)
        if REMOTE not in repo.remotes.names():
            repo.remotes.create(REMOTE, clean_url(url), FETCH_REFSPEC)
        if "core.logAllRefUpdates" not in repo.config:
            # No reflogs: nothing reads them, and a job's worktree (not bare, so libgit2 would log)
            # creating a log directory outside the lock raced with another process's ref deletion
            # pruning that directory under it ("failed to make directory .../logs/refs/heads/...").
            repo.config["core.logAllRefUpdates"] = False
        _clear_stale_ref_locks(mirror)
        return repo

    def _fetch(self, repo: pygit2.Repository, url: str, unless_fetched_since: float | None = None) -> None:
        """Fetch every branch; prune so a deleted base branch is noticed. Caller holds the lock.
        A transient failure is tried again (:class:`~codeworker.git.retries.GitRetries`).

        With ``unless_fetched_since`` (wall clock), nothing is fetched if a fetch that began at or
        after that moment has completed: the caller asked for the remote as it was then, and that
        fetch saw it later still. A recorded start later than now (the clock was set back) does not
        count."""
        stamp = Path(repo.path) / FETCHED
        if unless_fetched_since is not None:
            with contextlib.suppress(OSError, ValueError):
                if unless_fetched_since <= float(stamp.read_text()) <= time.time():
                    return
        began = time.time()
        self.retries.run(f"fetch from {clean_url(url)}", lambda: self._fetch_once(repo, url))
        stamp.write_text(repr(began))

    def _fetch_once(self, repo: pygit2.Repository, url: str) -> None:
        """One try of :meth:`_fetch`.

        With ``max_repo_bytes`` set, the mirror's objects are measured before (a mirror already
        over the limit fails without a network round trip), during (the transfer is aborted) and
        after the fetch (the pack index, and bases libgit2 appends to a thin pack, were not sent).
        """
        callbacks = self.auth()
        if self.max_repo_bytes:
            stored = self._check_objects_size(repo, url)
            callbacks = SizeLimitedFetch(self._token, clean_url(url), stored, self.max_repo_bytes)
        try:
            repo.remotes[REMOTE].fetch(callbacks=callbacks, prune=FetchPrune.PRUNE)
        except (AuthenticationFailed, RepositoryTooLarge):
            raise
        except pygit2.GitError as exc:
            raise GitError(f"fetch from {clean_url(url)} failed: {exc}") from exc
        if self.max_repo_bytes:
            self._check_objects_size(repo, url)

    def _check_objects_size(self, repo: pygit2.Repository, url: str) -> int:
        """Bytes of the mirror's object store (packs and loose objects); raises over the limit."""
        objects = Path(repo.path) / "objects"
        size = sum(entry.stat().st_size for entry in objects.rglob("*") if entry.is_file())
        if size > self.max_repo_bytes:
            raise RepositoryTooLarge(clean_url(url), "its git objects", size, self.max_repo_bytes)
        return size

    def _check_checkout_size(self, repo: pygit2.Repository, tree: pygit2.Tree, url: str) -> None:
        """Raise before a checkout would write more than the limit: a small, well-compressed pack
        can hold a checkout many times its size. Blob sizes come from object headers, unread."""
        if not self.max_repo_bytes:
            return
        size = 0
        pending = [tree]
        while pending:
            for entry in pending.pop():
                if entry.type == pygit2.enums.ObjectType.TREE:
                    pending.append(repo[entry.id])
                elif entry.type == pygit2.enums.ObjectType.BLOB:
                    size += repo.odb.read_header(entry.id)[1]
                    if size > self.max_repo_bytes:
                        raise RepositoryTooLarge(
                            clean_url(url), "its checked-out files", size, self.max_repo_bytes
                        )

    def push_refspec(
        self, repo: pygit2.Repository, url: str, refspec: str, lease: Lease | None = None
    ) -> None:
        """Push one refspec; a ref the server (or libgit2's fast-forward check) refused raises, and
        so does a ``lease`` the remote ref no longer matches (nothing is sent then).

        Not under the mirror lock: pushing only reads objects and updates one remote-tracking ref,
        and serialising pushes would serialise every job on a repository for a network round trip.
        A transient failure is tried again; a retry whose earlier try reached the server finds the
        remote ref already at the pushed commit, which the lease accepts (nothing is sent again).
        """
        dst = refspec.rsplit(":", 1)[-1]
        self.retries.run(
            f"push of {dst} to {clean_url(url)}", lambda: self._push_once(repo, url, refspec, lease)
        )

    def _push_once(self, repo: pygit2.Repository, url: str, refspec: str, lease: Lease | None) -> None:
        """One try of :meth:`push_refspec`."""
        auth = self.auth()
        auth.lease = lease
        dst = refspec.rsplit(":", 1)[-1]
        try:
            repo.remotes[REMOTE].push([refspec], callbacks=auth)
        except (AuthenticationFailed, PushRejected):
            raise
        except pygit2.GitError as exc:
            # libgit2's own refusal of a non-fast-forward (checked against the advertised remote
            # ref) is a rejection too: the base moved after our fetch.
            if any(hint in str(exc) for hint in _NON_FAST_FORWARD_HINTS):
                raise PushRejected(dst, str(exc)) from exc
            raise GitError(f"push of {dst} to {clean_url(url)} failed: {exc}") from exc
        if auth.rejected:
            ref, reason = next(iter(auth.rejected.items()))
            detail = "".join(auth.remote_messages).strip()
            raise PushRejected(ref, f"{reason}: {detail}" if detail else reason)

    def discard(self, url: str, operation_id: str, branch: str, attempt: str) -> None:
        """Remove one attempt's worktree and local branch without its Worktree object (cleanup
        after a job whose process was killed)."""
        self.release(
            url,
            _worktree_name(operation_id, attempt),
            self.worktree_path(operation_id, attempt),
            _local_branch(branch, attempt),
        )

    def release(self, url: str, name: str, path: Path, local_branch: str) -> None:
        """Undo a checkout (directory, worktree record, local branch); each step tolerates absence."""
        with self.locked(url) as mirror:
            if not (mirror / "HEAD").exists():
                shutil.rmtree(path, ignore_errors=True)
                return
            repo = pygit2.Repository(str(mirror))
            _drop_worktree(repo, name, path)
            ref = repo.references.get(f"refs/heads/{local_branch}")
            if ref is not None:
                ref.delete()


GIT_ENV = {
    "PATH": os.environ.get("PATH", os.defpath),
    "HOME": "/nonexistent",
    "LANG": "C",
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_TERMINAL_PROMPT": "0",
}
"""The whole environment of the git command: no configuration but the mirror's own (no filters,
no hooks, no credential helpers from the host), nothing of the worker's (no token)."""


def _add_worktree(mirror: Path, path: Path, local_branch: str, branch: str) -> None:
    """``git worktree add`` of ``local_branch`` at ``path``, named for its directory. git's own
    checkout writes a worktree of 5,000 files in about half the time libgit2's does
    (``bench/checkout.py``), and a checkout is the largest fixed cost of a job. Caller holds the
    lock."""
    done = subprocess.run(
        ["git", "-c", f"core.hooksPath={os.devnull}", "worktree", "add", "--quiet", str(path), local_branch],
        cwd=mirror,
        env=GIT_ENV,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise GitError(f"cannot create worktree for {branch}: {done.stderr.strip()[-500:]}")


def _worktree_name(operation_id: str, attempt: str) -> str:
    """The attempt's worktree name in the mirror, also its directory's name under ``worktrees/``."""
    if not is_operation_id(operation_id):
        raise InvalidRepository(f"operation id {operation_id!r} is not usable as a worktree name")
    if not re.fullmatch(r"[A-Za-z0-9_-]+", attempt):
        raise InvalidRepository(f"attempt {attempt!r} is not usable as a worktree name")
    return f"{operation_id}.{attempt}"


def _local_branch(branch: str, attempt: str) -> str:
    """The attempt's own branch in the mirror, pushed to ``branch`` on the remote."""
    return f"{branch}.{attempt}"


def _check_branch(branch: str) -> None:
    if not pygit2.reference_is_valid_name(f"refs/heads/{branch}"):
        raise InvalidRepository(f"not a valid branch name: {branch!r}")


def _clear_stale_ref_locks(mirror: Path) -> None:
    """Delete lock files of refs that are only written under our flock, which we now hold.

    Remote-tracking refs and ``packed-refs`` change only in fetch and branch deletion, both done
    under the mirror lock, so a lock file there belongs to a process that died holding it; left
    alone it would fail every later fetch. Job branches' locks are not touched: a running job in
    another process may be committing.
    """
    stale = [mirror / "packed-refs.lock", *(mirror / "refs" / "remotes").rglob("*.lock")]
    for path in stale:
        path.unlink(missing_ok=True)


def _drop_worktree(repo: pygit2.Repository, name: str, path: Path) -> None:
    """Delete a worktree's directory and its registration in the mirror. Caller holds the lock."""
    shutil.rmtree(path, ignore_errors=True)
    if name in repo.list_worktrees():
        repo.lookup_worktree(name).prune(True)
