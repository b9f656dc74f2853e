"""What a git operation raises. Every message names the repository, never a credential."""

from __future__ import annotations

__all__ = [
    "AuthenticationFailed",
    "BaseBranchMissing",
    "GitError",
    "InvalidRepository",
    "MergeConflict",
    "PushRejected",
    "RepositoryTooLarge",
    "UnsafeSymlink",
]


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
