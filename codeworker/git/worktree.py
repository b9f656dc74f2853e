"""One job's checkout: a branch of the shared mirror in its own directory, its uncommitted change,
and committing, pushing and merging it.

Why this shape: the agent's commands may write the checkout, its ``.git`` file included, and see a
private copy of the worktree's admin directory (see :mod:`codeworker.sandbox.bubblewrap`). So the
worker opens a worktree through the admin directory it created (:attr:`Worktree.git_dir`), which the
sandbox cannot write, and never through the checkout's ``.git`` file; and it never commits a
symbolic link that points out of the repository (:class:`~codeworker.git.errors.UnsafeSymlink`).

A job writes no object into the shared mirror until it pushes: every object the worker writes for
it (the blobs staged to diff and measure the change, the commit's trees and commit) goes to the
job's own store, ``objects`` in the worktree's admin directory, searched before the mirror's. So a
change refused for its size or a secret never grows the mirror that every later job on the
repository fetches into and is measured against; its store goes with the worktree. The commit
stays pending (no ref names it) until :meth:`Worktree.push` moves its objects into the mirror and
only then points the local branch at it: a mirror ref to an object the mirror lacks would fail
every later fetch ("object not found"). A push that fails after that leaves the objects in the
mirror, unreachable; they are never deleted there, since another job may have published the same.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pygit2
from pygit2.enums import SortMode

from codeworker.git.auth import Lease
from codeworker.git.errors import BaseBranchMissing, GitError, MergeConflict, UnsafeSymlink
from codeworker.git.remote import clean_url, remote_tip

if TYPE_CHECKING:
    from codeworker.git.mirrors import Mirrors

__all__ = ["BaseFile", "Worktree"]

JOB_STORE = "objects"
"""The job's object store, a directory of the worktree's admin directory in the mirror."""

JOB_STORE_PRIORITY = 10
"""The job store's backend priority: above libgit2's own (packs 2, loose objects 1), so writes go
there and reads look there first."""


@dataclass(frozen=True)
class BaseFile:
    """One file as the base commit holds it."""

    data: bytes
    symlink: bool = False
    """``data`` is the target of a symbolic link."""


class Worktree:
    """One job's checkout: a branch of the shared mirror, checked out in its own directory."""

    def __init__(
        self,
        mirrors: Mirrors,
        url: str,
        path: Path,
        *,
        branch: str,
        base: str,
        base_commit: str,
        name: str,
        local_branch: str,
        seen: str | None,
    ) -> None:
        self.path = path
        self.branch = branch
        """The branch on the remote."""
        self.base = base
        self.base_commit = base_commit
        self.name = name
        """The worktree's name in the mirror (one per attempt)."""
        self.local_branch = local_branch
        """The attempt's own branch in the mirror, pushed to :attr:`branch`."""
        self.seen = seen
        """Where the remote had :attr:`branch` at checkout (None: it had no such branch)."""
        self.url = clean_url(url)
        self._mirrors = mirrors
        self.pending: str | None = None
        """The commit made and not yet pushed: its objects are in the job's store alone."""
        self.builds_on: str | None = None
        """A revision's parent: the branch's tip, whose files :meth:`take_branch` put in the
        checkout. HEAD stays at the base commit, so every diff (and the verification) still sees
        the whole change against the base, while the commit goes on top of the tip."""

    def __repr__(self) -> str:
        return f"Worktree(path={self.path!r}, branch={self.branch!r}, base={self.base!r})"

    @property
    def git_dir(self) -> Path:
        """The worktree's admin directory in the mirror (HEAD, index, the link to the checkout)."""
        return self._mirrors.mirror_path(self.url) / "worktrees" / self.name

    def repository(self) -> pygit2.Repository:
        """A fresh handle each time: pygit2 caches the index, and the agent edits files under us.

        Opened through :attr:`git_dir`, never through the checkout's ``.git`` file: the agent can
        rewrite that file to name a repository of its own, whose config would send our commit and
        push (and the token) wherever it likes. Every object written through it goes to the job's
        store (see the module's docstring).
        """
        repo = pygit2.Repository(str(self.git_dir))
        store = self.git_dir / JOB_STORE
        store.mkdir(exist_ok=True)
        repo.odb.add_backend(pygit2.OdbBackendLoose(str(store), -1, False), JOB_STORE_PRIORITY)
        return repo

    # -- reading changes --------------------------------------------------------------------------

    def changed_files(self, since: str | None = None) -> list[str]:
        """Paths that a commit now would add, modify or delete (untracked included, ignored not),
        against HEAD or against commit ``since``."""
        repo = self.repository()
        paths = set()
        for patch in self._diff(repo, since):
            delta = patch.delta
            paths.add(delta.old_file.path)
            paths.add(delta.new_file.path)
        return sorted(paths)

    def added_lines(self, since: str | None = None) -> dict[str, list[tuple[int, str]]]:
        """Added lines per path (against HEAD, or commit ``since``), with 1-based line numbers in
        the new file, for the secret scan.

        Binary files are diffed as text (decoded with ``errors="replace"``) so a key hidden in a
        file git would call binary is still seen. Deleted files have no added lines and are absent.
        """
        repo = self.repository()
        added: dict[str, list[tuple[int, str]]] = {}
        for patch in self._diff(repo, since):
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

    def base_contents(self, paths: list[str]) -> dict[str, BaseFile | None]:
        """Each of ``paths`` as the commit the change is made on holds it (None: no such file)."""
        tree = self.repository().head.peel(pygit2.Commit).tree
        contents: dict[str, BaseFile | None] = {}
        for path in paths:
            try:
                entry = tree[path]
            except KeyError:
                contents[path] = None
                continue
            blob = entry.peel(pygit2.Blob) if entry.type_str == "blob" else None
            contents[path] = (
                BaseFile(blob.data, entry.filemode == pygit2.enums.FileMode.LINK)
                if blob is not None
                else None
            )
        return contents

    def change_size(self) -> int:
        """Bytes of the uncommitted change as ``git diff -U0`` prints it: every added and removed
        line plus the file and hunk headers (binary files as text, as the secret scan sees them)."""
        repo = self.repository()
        return sum(len(patch.data) for patch in self._diff(repo))

    # -- writing ----------------------------------------------------------------------------------

    def take_branch(self) -> None:
        """Put the files of the remote branch's tip (:attr:`seen`) in the checkout, HEAD staying at
        the base commit: a revision edits the pull request as it is, and commits on its tip."""
        if self.seen is None:
            raise GitError(f"branch {self.branch} is not on the remote")
        repo = self.repository()
        tip = repo[self.seen].peel(pygit2.Commit)
        repo.checkout_tree(tip.tree, strategy=pygit2.enums.CheckoutStrategy.FORCE)
        self.builds_on = self.seen

    def commit(self, message: str, author_name: str, author_email: str) -> str | None:
        """Stage everything (deletions too) and commit, pending until :meth:`push`; None when
        nothing changed."""
        repo = self.repository()
        index = _stage_all(repo)
        tree = index.write_tree()
        head = (
            repo[self.builds_on].peel(pygit2.Commit)
            if self.builds_on and self.pending is None
            else self._tip(repo)
        )
        if tree == head.tree_id:
            return None
        _check_symlinks(repo, head.tree.diff_to_tree(repo[tree]))
        index.write()
        signature = pygit2.Signature(author_name, author_email)
        self.pending = str(repo.create_commit(None, signature, signature, message, tree, [head.id]))
        return self.pending

    def push(self) -> None:
        """Push the job branch, only if the remote still has it where this attempt saw it (absent
        for a new operation); :class:`~codeworker.git.errors.PushRejected` otherwise, and nothing
        is sent. Forced over that one commit: a re-run after a crash starts again from base, so
        its history may legitimately differ from what an earlier attempt pushed."""
        ref = f"refs/heads/{self.branch}"
        self._publish()
        self._mirrors.push_refspec(
            self.repository(),
            self.url,
            f"+refs/heads/{self.local_branch}:{ref}",
            lease=Lease(ref, self.seen),
        )

    def merge_into_base(self, message: str, author_name: str, author_email: str) -> str:
        """Land the branch on the base branch on the server; returns the base's new sha.

        Fast-forward when the base has not moved, otherwise a merge commit (base first, branch
        second, as ``git merge`` on base would make). Never forced: if the base moves again between
        our fetch and our push, libgit2 or the server refuses and :class:`PushRejected` says so.
        """
        self._mirrors.fetch(self.url)
        repo = self.repository()
        base_tip = remote_tip(repo, self.base)
        if base_tip is None:
            raise BaseBranchMissing(self.url, self.base)
        branch_tip = self._tip(repo).id
        if base_tip == branch_tip or repo.descendant_of(base_tip, branch_tip):
            return str(base_tip)  # already merged: nothing to push
        if repo.descendant_of(branch_tip, base_tip):
            new = branch_tip
        else:
            new = self._merge_commit(repo, base_tip, branch_tip, message, author_name, author_email)
        self._publish()
        self._mirrors.push_refspec(self.repository(), self.url, f"{new}:refs/heads/{self.base}")
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
        walker = repo.walk(self._tip(repo).id, SortMode.TOPOLOGICAL | SortMode.REVERSE)
        walker.hide(self.base_commit)
        return [str(commit.id) for commit in walker]

    def remove(self) -> None:
        """Delete the directory, the mirror's record of it, and the local branch. Idempotent."""
        self._mirrors.release(self.url, self.name, self.path, self.local_branch)

    def check_symlinks(self) -> None:
        """Raise :class:`UnsafeSymlink` if a commit now would add a link pointing out of the repository
        (:meth:`commit` checks again; this lets a caller refuse before doing anything else)."""
        repo = self.repository()
        _check_symlinks(repo, self._diff(repo))

    # -- private ----------------------------------------------------------------------------------

    def _tip(self, repo: pygit2.Repository) -> pygit2.Commit:
        """The branch's last commit: the pending one, else HEAD."""
        if self.pending is not None:
            return repo[self.pending].peel(pygit2.Commit)
        return repo.head.peel(pygit2.Commit)

    def _publish(self) -> None:
        """Move the job's objects into the mirror, then point the local branch at the pending
        commit: in that order, so no ref of the mirror ever names an object it lacks. Renames
        within one file system are atomic, and an object already there has the same content."""
        store = self.git_dir / JOB_STORE
        objects = self._mirrors.mirror_path(self.url) / "objects"
        for path in store.glob("??/*"):
            target = objects / path.parent.name / path.name
            target.parent.mkdir(exist_ok=True)
            path.replace(target)
        if self.pending is not None:
            repo = self.repository()
            repo.references[f"refs/heads/{self.local_branch}"].set_target(self.pending, "codeworker: commit")
            self.pending = None

    def _diff(self, repo: pygit2.Repository, since: str | None = None) -> pygit2.Diff:
        """Diff HEAD (or commit ``since``) against the tree a commit would record, without touching
        the on-disk index.

        Diffing the would-be commit means changed_files, added_lines and commit always agree
        (untracked files included, ignored ones not). FORCE_TEXT keeps binary files line-diffable.
        """
        tree = repo[_stage_all(repo).write_tree()]
        head_tree = repo[since].peel(pygit2.Commit).tree if since else self._tip(repo).tree
        return head_tree.diff_to_tree(tree, flags=pygit2.enums.DiffOption.FORCE_TEXT, context_lines=0)


def _stage_all(repo: pygit2.Repository) -> pygit2.Index:
    """The repository's index with every change staged, in memory only (the caller may write it)."""
    index = repo.index
    index.read(force=True)
    try:
        # ``git add -A``: new and modified files staged, deleted ones removed, ignored ones skipped.
        index.add_all()
    except pygit2.GitError as exc:  # e.g. a tree nested deeper than libgit2 walks (100 levels)
        raise GitError(f"cannot stage the working tree: {exc}") from exc
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
