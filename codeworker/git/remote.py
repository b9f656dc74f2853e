"""The one remote of every mirror, ``origin``: its URL, stored without credentials, and the branch
tips a fetch leaves under ``refs/remotes/origin/*``."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

import pygit2

from codeworker.git.errors import InvalidRepository

__all__ = ["FETCH_REFSPEC", "REMOTE", "clean_url", "remote_tip"]

REMOTE = "origin"
# Remote-tracking refs only, so a fetch never touches the job branches (see codeworker.git.mirrors).
FETCH_REFSPEC = f"+refs/heads/*:refs/remotes/{REMOTE}/*"


def clean_url(url: str) -> str:
    """The URL without any userinfo, so nothing secret reaches the remote's config."""
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise InvalidRepository(f"not an HTTP(S) repository URL: {parts.scheme}://{parts.hostname or ''}")
    netloc = parts.hostname
    if parts.port:
        netloc = f"{netloc}:{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def remote_tip(repo: pygit2.Repository, base: str) -> pygit2.Oid | None:
    """The commit ``base`` pointed at on the server as of the last fetch; None if it has no such branch."""
    ref = repo.references.get(f"refs/remotes/{REMOTE}/{base}")
    return None if ref is None else ref.peel(pygit2.Commit).id
