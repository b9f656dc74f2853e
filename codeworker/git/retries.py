"""Which git network failures are worth another try, and trying again with backoff.

A remote that refused the connection, reset it, answered 5xx or stopped answering (libgit2's read
timeout) may well answer the next try; a push the server rejected (a hook, branch protection, a
lease that no longer holds), a refused token, a missing branch or a repository over the limit will
not, so those are never retried. Each failure is counted by kind
(``codeworker_external_errors_total{service="git"}``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from codeworker.git.errors import GitError, PushRejected
from codeworker.worker import metrics

log = logging.getLogger(__name__)

T = TypeVar("T")

TRANSIENT = {
    "timeout": ("timed out", "timeout"),
    "connect": ("failed to connect", "connection refused", "could not connect"),
    "reset": (
        "reset by peer",
        "unexpected eof",
        "invalid eof",
        "early eof",
        "broken pipe",
        "connection closed",
    ),
    "server_error": ("unexpected http status code: 5", "status code: 5"),
}
"""libgit2's words for a failure that another try may not meet, by kind."""

MAX_DELAY = 30.0
"""Longest pause between two tries, in seconds."""


def transient_kind(exc: BaseException) -> str | None:
    """The kind of a failure worth another try, None for one that would only repeat."""
    if type(exc) is not GitError:  # a rejection, a refused token, a size limit, a missing branch
        return None
    text = str(exc).lower()
    for kind, hints in TRANSIENT.items():
        if any(hint in text for hint in hints):
            return kind
    return None


@dataclass(frozen=True)
class GitRetries:
    """``retries`` more tries after the first, pausing ``delay`` seconds, then twice that..."""

    retries: int = 3
    delay: float = 1.0

    def run(self, what: str, action: Callable[[], T]) -> T:
        """``action()``, tried again after a transient failure; the last failure is raised with the
        number of tries in its message."""
        for attempt in range(self.retries + 1):
            try:
                return action()
            except GitError as exc:
                kind = transient_kind(exc)
                metrics.external_error("git", kind or _kind_of(exc))
                if kind is None:
                    raise
                if attempt == self.retries:
                    raise GitError(f"{exc} (after {attempt + 1} tries)") from exc
                pause = min(MAX_DELAY, self.delay * 2**attempt)
                log.warning("%s failed (%s), trying again in %.1f s: %s", what, kind, pause, exc)
                time.sleep(pause)
        raise AssertionError("unreachable")


DEFAULT_RETRIES = GitRetries()


def _kind_of(exc: GitError) -> str:
    return "rejected" if isinstance(exc, PushRejected) else type(exc).__name__
