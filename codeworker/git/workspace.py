"""The git workspace: one shared bare mirror per repository, one pygit2 worktree per job.

Why this shape:

- A mirror per repository means a second job on the same repository fetches a few objects instead of
  cloning again. Several worker processes on one machine share ``WORKSPACE_ROOT``, so every fetch and
  every worktree creation or removal runs under an exclusive ``flock`` on a file next to the mirror.
- The mirror's fetch refspec is ``+refs/heads/*:refs/remotes/origin/*``: job branches live as local
  ``refs/heads/*`` and a fetch can never clobber them.
- The token travels only as an ``Authorization`` header produced by :class:`GitAuth` for each
  network operation. It is never in a URL, a remote's config, ``.git/config``, a log line or an
  exception message; a URL that arrives with credentials in it is stored without them.
- The agent's commands may write the checkout, its ``.git`` file included, and see a private copy of
  the worktree's admin directory (see :mod:`codeworker.sandbox.bubblewrap`). So the worker opens a worktree
  through the admin directory it created (:attr:`Worktree.git_dir`), which the sandbox cannot write,
  and never through the checkout's ``.git`` file; and it never commits a symbolic link that points
  out of the repository (:class:`UnsafeSymlink`).
- pygit2's ``Remote.push`` does not raise when the server refuses a ref, so :class:`GitAuth`
  collects ``push_update_reference`` reports and the push turns them into :class:`PushRejected`.
"""

from __future__ import annotations

import base64
import fcntl
import os
import posixpath
import re
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pygit2
from pydantic import SecretStr
from pygit2.enums import FetchPrune, Option, SortMode

from codeworker.coordination.keys import repo_id
from codeworker.names import is_operation_id

__all__ = [
    "AuthenticationFailed",
    "BaseBranchMissing",
    "GitAuth",
    "GitError",
    "InvalidRepository",
    "MergeConflict",
    "Mirrors",
    "PushRejected",
    "RepositoryTooLarge",
    "UnsafeSymlink",
    "Worktree",
]

_REMOTE = "origin"
_FETCH_REFSPEC = f"+refs/heads/*:refs/remotes/{_REMOTE}/*"
_SAFE_SEGMENT = re.compile(r"^[a-z0-9][a-z0-9._:-]*$")
# libgit2 1.9 messages when it refuses a non-forced push whose remote ref moved on.
_NON_FAST_FORWARD_HINTS = ("non-fastforwardable", "non-fast-forward", "not present locally")


# -- errors ---------------------------------------------------------------------------------------


class GitError(Exception):
    """A git operation failed. Messages name the repository, never a credential."""


class InvalidRepository(GitError):
    """The repository URL, branch name or operation id cannot be used safely on disk or in git."""


class AuthenticationFailed(GitError):
    """The server refused the token (HTTP 401 even though the Authorization header was sent)."""


class BaseBranchMissing(GitError):
    """The job's base branch does not exist on the remote."""

    def __init__(self, url: str, base: str) -> None:
        super().__init__(f"base branch {base!r} does not exist in {url}")
        self.url = url
        self.base = base


class PushRejected(GitError):
    """The server refused to update a ref (protected branch, hook, non-fast-forward)."""

    def __init__(self, ref: str, message: str) -> None:
        super().__init__(f"push to {ref} was rejected: {message}")
        self.ref = ref
        self.message = message


class RepositoryTooLarge(GitError):
    """The repository is larger than the worker accepts (``max_repo_bytes``); it never will fit."""

    def __init__(self, url: str, measure: str, size: int, limit: int) -> None:
        super().__init__(
            f"repository {url} is too large: {measure} come to at least {size:,} bytes, "
            f"over the limit of {limit:,} bytes (CODEWORKER_MAX_REPO_BYTES)"
        )
        self.url = url
        self.measure = measure
        self.size = size
        self.limit = limit


class UnsafeSymlink(GitError):
    """The change adds symbolic links that point out of the repository; nothing is committed.

    On the worker such a link is a way to host files; in a pull request it is a trap for whoever
    checks the branch out. Links that stay inside the repository are committed as links.
    """

    def __init__(self, links: dict[str, str]) -> None:
        shown = ", ".join(f"{path} -> {target}" for path, target in sorted(links.items()))
        super().__init__(f"refusing to commit symbolic links that point outside the repository: {shown}")
        self.links = links


class MergeConflict(GitError):
    """Merging the job branch into its base conflicts; nothing was pushed."""

    def __init__(self, base: str, branch: str, paths: list[str]) -> None:
        super().__init__(f"merging {branch} into {base} conflicts in: {', '.join(paths)}")
        self.base = base
        self.branch = branch
        self.paths = paths


# -- transport ------------------------------------------------------------------------------------

_timeouts_lock = threading.Lock()
_timeouts_set: tuple[int, int] | None = None


def _set_timeouts(connect_ms: int, read_ms: int) -> None:
    """libgit2's server timeouts are process-wide; set them once (again only if they change)."""
    global _timeouts_set
    with _timeouts_lock:
        if _timeouts_set == (connect_ms, read_ms):
            return
        pygit2.option(Option.SET_SERVER_CONNECT_TIMEOUT, connect_ms)
        pygit2.option(Option.SET_SERVER_TIMEOUT, read_ms)
        _timeouts_set = (connect_ms, read_ms)


class GitAuth(pygit2.RemoteCallbacks):
    """Sends the token as a Basic header up front and records what the server said about each ref.

    The header is sent on the first request (``custom_headers``), so libgit2 never needs a 401
    round trip or a credential helper, and the token never needs to be part of a URL. One instance
    serves one network operation: its ``rejected`` map belongs to that push.
    """

    def __init__(self, token: SecretStr | str) -> None:
        super().__init__()
        self._token = token if isinstance(token, SecretStr) else SecretStr(token)
        self.rejected: dict[str, str] = {}
        """Remote ref name -> the server's reason, for every ref the server refused to update."""
        self.remote_messages: list[str] = []
        """Sideband text from the server (hook output), to explain a rejection."""

    def __repr__(self) -> str:
        return "GitAuth(token=SecretStr('**********'))"

    def custom_headers(self) -> list[str]:
        raw = f"x-access-token:{self._token.get_secret_value()}".encode()
        return [f"Authorization: Basic {base64.b64encode(raw).decode()}"]

    def credentials(self, url: str, username_from_url: str | None, allowed_types: object) -> object:
        """Only called after the server answered 401 to our header: the token is wrong or missing."""
        raise AuthenticationFailed(f"the server refused the token for {url}")

    def push_update_reference(self, refname: str, message: str | None) -> None:
        if message:
            self.rejected[refname] = message

    def sideband_progress(self, string: str) -> None:
        self.remote_messages.append(string)


class _SizeLimitedFetch(GitAuth):
    """Aborts a fetch once the mirror's objects plus what the fetch received pass the limit.

    An exception raised here makes libgit2 stop the transfer and delete its partial pack, and
    pygit2 re-raises it from ``fetch``: the mirror keeps only what it had before.
    """

    def __init__(self, token: SecretStr, url: str, stored: int, limit: int) -> None:
        super().__init__(token)
        self._url = url
        self._stored = stored
        self._limit = limit

    def transfer_progress(self, stats: pygit2.remotes.TransferProgress) -> None:
        size = self._stored + stats.received_bytes
        if size > self._limit:
            raise RepositoryTooLarge(self._url, "its git objects", size, self._limit)


# -- mirrors --------------------------------------------------------------------------------------


def _clean_url(url: str) -> str:
    """The URL without any userinfo, so nothing secret reaches the remote's config."""
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise InvalidRepository(f"not an HTTP(S) repository URL: {parts.scheme}://{parts.hostname or ''}")
    netloc = parts.hostname
    if parts.port:
        netloc = f"{netloc}:{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


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
    ) -> None:
        self.root = Path(root)
        self._token = token if isinstance(token, SecretStr) else SecretStr(token)
        self.max_repo_bytes = max_repo_bytes
        """Largest repository accepted, in bytes of git objects and of checked-out files; 0: any."""
        _set_timeouts(connect_timeout_ms, read_timeout_ms)

    def __repr__(self) -> str:
        return f"Mirrors(root={self.root!r})"

    # -- paths ------------------------------------------------------------------------------------

    def mirror_path(self, url: str) -> Path:
        return self.root / "mirrors" / _mirror_relpath(url)

    def worktree_path(self, operation_id: str) -> Path:
        _check_operation_id(operation_id)
        return self.root / "worktrees" / operation_id

    def _lock_path(self, mirror: Path) -> Path:
        return mirror.with_name(mirror.name + ".lock")

    @contextmanager
    def locked(self, url: str) -> Iterator[Path]:
        """Hold the repository's mirror lock; yields the mirror path."""
        mirror = self.mirror_path(url)
        with _flock(self._lock_path(mirror)):
            yield mirror

    # -- public -----------------------------------------------------------------------------------

    def checkout(self, url: str, base: str, branch: str, operation_id: str) -> Worktree:
        """Fetch, then give the job a fresh worktree on a new ``branch`` starting at ``origin/base``.

        Leftovers of an earlier crashed attempt of the same operation (its worktree, its branch)
        are replaced, so a redelivered job starts clean.
        """
        _check_branch(branch)
        _check_branch(base)
        path = self.worktree_path(operation_id)
        with self.locked(url) as mirror:
            repo = self._open_or_init(mirror, url)
            self._fetch(repo, url)
            base_commit = _remote_tip(repo, base)
            if base_commit is None:
                raise BaseBranchMissing(_clean_url(url), base)
            self._check_checkout_size(repo, repo[base_commit].peel(pygit2.Tree), url)
            _drop_worktree(repo, operation_id, path)
            # With the old worktree gone nobody commits on the branch; its lock is a crash leftover.
            (mirror / "refs" / "heads" / f"{branch}.lock").unlink(missing_ok=True)
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                ref = repo.create_branch(branch, repo[base_commit], True)
                repo.add_worktree(operation_id, str(path), ref)
            except pygit2.GitError as exc:
                raise GitError(f"cannot create worktree for {branch}: {exc}") from exc
        return Worktree(self, url, path, branch, base, str(base_commit), operation_id)

    def fetch(self, url: str) -> None:
        """Bring the mirror of ``url`` up to date (creating it on first use)."""
        with self.locked(url) as mirror:
            self._fetch(self._open_or_init(mirror, url), url)

    def cleanup_stale(self) -> list[str]:
        """Remove worktree directories whose mirror no longer knows them; returns their names.

        Called at worker start: a killed worker leaves directories behind that no job will reuse.
        """
        removed: list[str] = []
        worktrees = self.root / "worktrees"
        if not worktrees.is_dir():
            return removed
        for entry in sorted(worktrees.iterdir()):
            gitfile = entry / ".git"
            if gitfile.is_file():
                admin = Path(gitfile.read_text().removeprefix("gitdir:").strip())
                if admin.is_dir():
                    continue  # a registered worktree, possibly of a running job
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry.name)
        return removed

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
        if _REMOTE not in repo.remotes.names():
            repo.remotes.create(_REMOTE, _clean_url(url), _FETCH_REFSPEC)
        _clear_stale_ref_locks(mirror)
        return repo

    def _fetch(self, repo: pygit2.Repository, url: str) -> None:
        """Fetch every branch; prune so a deleted base branch is noticed. Caller holds the lock.

        With ``max_repo_bytes`` set, the mirror's objects are measured before (a mirror already
        over the limit fails without a network round trip), during (the transfer is aborted) and
        after the fetch (the pack index, and bases libgit2 appends to a thin pack, were not sent).
        """
        callbacks = self.auth()
        if self.max_repo_bytes:
            stored = self._check_objects_size(repo, url)
            callbacks = _SizeLimitedFetch(self._token, _clean_url(url), stored, self.max_repo_bytes)
        try:
            repo.remotes[_REMOTE].fetch(callbacks=callbacks, prune=FetchPrune.PRUNE)
        except (AuthenticationFailed, RepositoryTooLarge):
            raise
        except pygit2.GitError as exc:
            raise GitError(f"fetch from {_clean_url(url)} failed: {exc}") from exc
        if self.max_repo_bytes:
            self._check_objects_size(repo, url)

    def _check_objects_size(self, repo: pygit2.Repository, url: str) -> int:
        """Bytes of the mirror's object store (packs and loose objects); raises over the limit."""
        objects = Path(repo.path) / "objects"
        size = sum(entry.stat().st_size for entry in objects.rglob("*") if entry.is_file())
        if size > self.max_repo_bytes:
            raise RepositoryTooLarge(_clean_url(url), "its git objects", size, self.max_repo_bytes)
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
                            _clean_url(url), "its checked-out files", size, self.max_repo_bytes
                        )

    def _push(self, repo: pygit2.Repository, url: str, refspec: str) -> None:
        """Push one refspec; a ref the server (or libgit2's fast-forward check) refused raises.

        Not under the mirror lock: pushing only reads objects and updates one remote-tracking ref,
        and serialising pushes would serialise every job on a repository for a network round trip.
        """
        auth = self.auth()
        dst = refspec.rsplit(":", 1)[-1]
        try:
            repo.remotes[_REMOTE].push([refspec], callbacks=auth)
        except AuthenticationFailed:
            raise
        except pygit2.GitError as exc:
            # libgit2's own refusal of a non-fast-forward (checked against the advertised remote
            # ref) is a rejection too: the base moved after our fetch.
            if any(hint in str(exc) for hint in _NON_FAST_FORWARD_HINTS):
                raise PushRejected(dst, str(exc)) from exc
            raise GitError(f"push of {dst} to {_clean_url(url)} failed: {exc}") from exc
        if auth.rejected:
            ref, reason = next(iter(auth.rejected.items()))
            detail = "".join(auth.remote_messages).strip()
            raise PushRejected(ref, f"{reason}: {detail}" if detail else reason)

    def discard(self, url: str, operation_id: str, branch: str) -> None:
        """Remove an operation's worktree and local branch without its Worktree object (cleanup
        after a job whose process was killed)."""
        self._release(url, operation_id, self.worktree_path(operation_id), branch)

    def _release(self, url: str, operation_id: str, path: Path, branch: str) -> None:
        """Undo a checkout (directory, worktree record, local branch); each step tolerates absence."""
        with self.locked(url) as mirror:
            if not (mirror / "HEAD").exists():
                shutil.rmtree(path, ignore_errors=True)
                return
            repo = pygit2.Repository(str(mirror))
            _drop_worktree(repo, operation_id, path)
            ref = repo.references.get(f"refs/heads/{branch}")
            if ref is not None:
                ref.delete()


def _check_operation_id(operation_id: str) -> None:
    if not is_operation_id(operation_id):
        raise InvalidRepository(f"operation id {operation_id!r} is not usable as a worktree name")


def _check_branch(branch: str) -> None:
    if not pygit2.reference_is_valid_name(f"refs/heads/{branch}"):
        raise InvalidRepository(f"not a valid branch name: {branch!r}")


def _remote_tip(repo: pygit2.Repository, base: str) -> pygit2.Oid | None:
    ref = repo.references.get(f"refs/remotes/{_REMOTE}/{base}")
    return None if ref is None else ref.peel(pygit2.Commit).id


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


# -- worktree -------------------------------------------------------------------------------------


class Worktree:
    """One job's checkout: a branch of the shared mirror, checked out in its own directory."""

    def __init__(
        self,
        mirrors: Mirrors,
        url: str,
        path: Path,
        branch: str,
        base: str,
        base_commit: str,
        operation_id: str,
    ) -> None:
        self.path = path
        self.branch = branch
        self.base = base
        self.base_commit = base_commit
        self.operation_id = operation_id
        self.url = _clean_url(url)
        self._mirrors = mirrors

    def __repr__(self) -> str:
        return f"Worktree(path={self.path!r}, branch={self.branch!r}, base={self.base!r})"

    @property
    def git_dir(self) -> Path:
        """The worktree's admin directory in the mirror (HEAD, index, the link to the checkout)."""
        return self._mirrors.mirror_path(self.url) / "worktrees" / self.operation_id

    def repository(self) -> pygit2.Repository:
        """A fresh handle each time: pygit2 caches the index, and the agent edits files under us.

        Opened through :attr:`git_dir`, never through the checkout's ``.git`` file: the agent can
        rewrite that file to name a repository of its own, whose config would send our commit and
        push (and the token) wherever it likes.
        """
        return pygit2.Repository(str(self.git_dir))

    # -- reading changes --------------------------------------------------------------------------

    def changed_files(self) -> list[str]:
        """Paths that a commit now would add, modify or delete (untracked included, ignored not)."""
        repo = self.repository()
        paths = set()
        for patch in self._diff(repo):
            delta = patch.delta
            paths.add(delta.old_file.path)
            paths.add(delta.new_file.path)
        return sorted(paths)

    def added_lines(self) -> dict[str, list[tuple[int, str]]]:
        """Added lines per path, with 1-based line numbers in the new file, for the secret scan.

        Binary files are diffed as text (decoded with ``errors="replace"``) so a key hidden in a
        file git would call binary is still seen. Deleted files have no added lines and are absent.
        """
        repo = self.repository()
        added: dict[str, list[tuple[int, str]]] = {}
        for patch in self._diff(repo):
            if patch.delta.status == pygit2.enums.DeltaStatus.DELETED:
                continue
            lines = [
                (line.new_lineno, _line_text(line.raw_content))
                for hunk in patch.hunks
                for line in hunk.lines
                if line.origin == "+"
            ]
            if lines:
                added[patch.delta.new_file.path] = lines
        return added

    def diff_stat(self) -> str:
        """``git diff --stat`` style summary of uncommitted changes, for logs and PR bodies."""
        repo = self.repository()
        return self._diff(repo).stats.format(pygit2.enums.DiffStatsFormat.FULL, 80)

    def change_size(self) -> int:
        """Bytes of the uncommitted change as ``git diff -U0`` prints it: every added and removed
        line plus the file and hunk headers (binary files as text, as the secret scan sees them)."""
        repo = self.repository()
        return sum(len(patch.data) for patch in self._diff(repo))

    # -- writing ----------------------------------------------------------------------------------

    def commit(self, message: str, author_name: str, author_email: str) -> str | None:
        """Stage everything (deletions too) and commit on the branch; None when nothing changed."""
        repo = self.repository()
        index = _stage_all(repo)
        tree = index.write_tree()
        head = repo.head.peel(pygit2.Commit)
        if tree == head.tree_id:
            return None
        _check_symlinks(repo, head.tree.diff_to_tree(repo[tree]))
        index.write()
        signature = pygit2.Signature(author_name, author_email)
        return str(repo.create_commit("HEAD", signature, signature, message, tree, [head.id]))

    def push(self) -> None:
        """Push the job branch. Forced: the branch belongs to this operation, and a re-run after a
        crash starts again from base, so its history may legitimately differ from an earlier try."""
        self._mirrors._push(
            self.repository(), self.url, f"+refs/heads/{self.branch}:refs/heads/{self.branch}"
        )

    def merge_into_base(self, message: str, author_name: str, author_email: str) -> str:
        """Land the branch on the base branch on the server; returns the base's new sha.

        Fast-forward when the base has not moved, otherwise a merge commit (base first, branch
        second, as ``git merge`` on base would make). Never forced: if the base moves again between
        our fetch and our push, libgit2 or the server refuses and :class:`PushRejected` says so.
        """
        self._mirrors.fetch(self.url)
        repo = self.repository()
        base_tip = _remote_tip(repo, self.base)
        if base_tip is None:
            raise BaseBranchMissing(self.url, self.base)
        branch_tip = repo.head.peel(pygit2.Commit).id
        if base_tip == branch_tip or repo.descendant_of(base_tip, branch_tip):
            return str(base_tip)  # already merged: nothing to push
        if repo.descendant_of(branch_tip, base_tip):
            new = branch_tip
        else:
            new = self._merge_commit(repo, base_tip, branch_tip, message, author_name, author_email)
        self._mirrors._push(repo, self.url, f"{new}:refs/heads/{self.base}")
        return str(new)

    def _merge_commit(
        self,
        repo: pygit2.Repository,
        base_tip: pygit2.Oid,
        branch_tip: pygit2.Oid,
        message: str,
        author_name: str,
        author_email: str,
    ) -> pygit2.Oid:
        index = repo.merge_commits(base_tip, branch_tip)
        if index.conflicts is not None:
            paths = sorted(
                {entry.path for triple in index.conflicts for entry in triple if entry is not None}
            )
            raise MergeConflict(self.base, self.branch, paths)
        tree = index.write_tree(repo)
        signature = pygit2.Signature(author_name, author_email)
        # No ref is updated: the commit exists only to be pushed to the base.
        return repo.create_commit(None, signature, signature, message, tree, [base_tip, branch_tip])

    def commits(self) -> list[str]:
        """Shas on the branch since ``base_commit``, oldest first."""
        repo = self.repository()
        walker = repo.walk(repo.head.target, SortMode.TOPOLOGICAL | SortMode.REVERSE)
        walker.hide(self.base_commit)
        return [str(commit.id) for commit in walker]

    def remove(self) -> None:
        """Delete the directory, the mirror's record of it, and the local branch. Idempotent."""
        self._mirrors._release(self.url, self.operation_id, self.path, self.branch)

    def check_symlinks(self) -> None:
        """Raise :class:`UnsafeSymlink` if a commit now would add a link pointing out of the repository
        (:meth:`commit` checks again; this lets a caller refuse before doing anything else)."""
        repo = self.repository()
        _check_symlinks(repo, self._diff(repo))

    # -- private ----------------------------------------------------------------------------------

    def _diff(self, repo: pygit2.Repository) -> pygit2.Diff:
        """Diff HEAD against the tree a commit would record, without touching the on-disk index.

        Diffing the would-be commit means changed_files, added_lines and commit always agree
        (untracked files included, ignored ones not). FORCE_TEXT keeps binary files line-diffable.
        """
        tree = repo[_stage_all(repo).write_tree()]
        head_tree = repo.head.peel(pygit2.Commit).tree
        return head_tree.diff_to_tree(tree, flags=pygit2.enums.DiffOption.FORCE_TEXT, context_lines=0)


def _stage_all(repo: pygit2.Repository) -> pygit2.Index:
    """The repository's index with every change staged, in memory only (the caller may write it)."""
    index = repo.index
    index.read(force=True)
    try:
        index.add_all()
    except pygit2.GitError as exc:  # e.g. a tree nested deeper than libgit2 walks (100 levels)
        raise GitError(f"cannot stage the working tree: {exc}") from exc
    workdir = Path(repo.workdir)
    gone = [entry.path for entry in index if not os.path.lexists(workdir / entry.path)]
    for path in gone:
        index.remove(path)
    return index


def _check_symlinks(repo: pygit2.Repository, diff: pygit2.Diff) -> None:
    """Raise :class:`UnsafeSymlink` for links the diff adds or changes that leave the repository.

    Judged on the link's stored target, as any clone would resolve it: absolute, or climbing out
    with ``..``, or into ``.git``. The worker never follows a link to decide (nor to scan: the
    scan reads the link's own blob, its target path).
    """
    escaping: dict[str, str] = {}
    for patch in diff:
        new = patch.delta.new_file
        if patch.delta.status == pygit2.enums.DeltaStatus.DELETED or new.mode != pygit2.enums.FileMode.LINK:
            continue
        target = repo[new.id].data.decode("utf-8", errors="replace")
        first = posixpath.normpath(posixpath.join(posixpath.dirname(new.path), target)).split("/")[0]
        if target.startswith("/") or first in ("..", ".git"):
            escaping[new.path] = target
    if escaping:
        raise UnsafeSymlink(escaping)


def _line_text(raw: bytes) -> str:
    return raw.decode("utf-8", errors="replace").removesuffix("\n").removesuffix("\r")
