"""What names codeworker accepts: repository-relative paths and operation ids.

Both end up on disk, in Redis keys, in git and in branch names, and arrive from senders, from
repositories and from the model; one rule each, used by the job model, the locks, the checkout,
the scanner and the git workspace alike.
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import PurePosixPath

OPERATION_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
"""Operation ids end up in Redis keys, directory names, libgit2 worktree names and branch names."""

OPERATION_ID_RULE = "must be 1-128 characters of letters, digits, '.', '_' or '-'"

MAX_PATH = 1024
"""Longest repo-relative path accepted, in characters."""

INVISIBLE_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp"})
"""Unicode control, format (bidi overrides, zero-width joiners) and line/paragraph separators:
characters that make a path or URL read differently from what it is."""


def shown(value: str, limit: int = 80) -> str:
    """``repr`` of a value for an error message, cut short: a hostile job's 1 MB field must not be
    echoed into every log line and result."""
    return repr(value) if len(value) <= limit else repr(value[:limit]) + f"... ({len(value)} characters)"


def invisible_characters(value: str) -> bool:
    return any(unicodedata.category(char) in INVISIBLE_CATEGORIES for char in value)


def is_operation_id(value: object) -> bool:
    return isinstance(value, str) and OPERATION_ID.match(value) is not None


def relative_path(value: str) -> str:
    """The one spelling of a repo-relative POSIX path (``./a//b.py`` is ``a/b.py``, so both share
    a lock); ValueError for one that is empty, absolute, climbs with ``..``, reaches into ``.git``,
    or holds NUL, a backslash (a separator on Windows checkouts of the branch) or invisible
    characters."""
    if len(value) > MAX_PATH:
        raise ValueError(f"path is longer than {MAX_PATH} characters")
    if not value or "\x00" in value or "\\" in value:
        raise ValueError(f"{shown(value)} is not a repo-relative path")
    if invisible_characters(value):
        raise ValueError(f"{shown(value)} holds control or invisible characters")
    path = PurePosixPath(value)
    if path.is_absolute() or ".." in path.parts or not path.parts:
        raise ValueError(f"{shown(value)} must be relative to the repository root, without '..'")
    if path.parts[0] == ".git":
        raise ValueError(f"{shown(value)} points into .git")
    return str(path)
