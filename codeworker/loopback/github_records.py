"""The GitHub stand-in's records: the request log, repositories with their pull requests, and faults.

``RecordedRequest`` is one entry of the log every request is kept in; ``Repo`` is a repository as
the stand-in holds it, its pull requests as the JSON GitHub returns them; ``Fault`` is a failure a
test asked for with ``fail_next``; ``error_reply`` and ``ValidationFailed`` answer in GitHub's
error shapes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

DOCS_URL = "https://docs.github.com/rest"

JSON = Any
Reply = tuple[int, JSON]


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the stand-in received it."""

    method: str
    path: str
    """Path with the query string, exactly as sent."""
    headers: dict[str, str]
    body: JSON
    """The parsed JSON body, or None when there was none."""


@dataclass
class Fault:
    method: str
    pattern: re.Pattern[str]
    status: int
    after_processing: bool
    remaining: int
    message: str = "Server Error"
    headers: dict[str, str] = field(default_factory=dict)
    """Headers of the failing answer (``Retry-After``, ``X-RateLimit-*``), over the usual ones."""
    delay: float = 0.0
    """Seconds the answer is held back (a client with a shorter timeout never sees it)."""


@dataclass
class Repo:
    owner: str
    name: str
    id: int
    default_branch: str = "main"
    pulls: list[dict[str, Any]] = field(default_factory=list)
    check_runs: list[dict[str, Any]] = field(default_factory=list)


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def error_reply(status: int, message: str, **extra: Any) -> Reply:
    return status, {"message": message, **extra, "documentation_url": DOCS_URL, "status": str(status)}


class ValidationFailed(Exception):
    """Raised inside a route to answer GitHub's ``422 Validation Failed`` shape."""

    def __init__(self, code: str, message: str | None = None, field_name: str | None = None) -> None:
        super().__init__(message or code)
        error: dict[str, str] = {"resource": "PullRequest", "code": code}
        if field_name is not None:
            error["field"] = field_name
        if message is not None:
            error["message"] = message
        self.error = error
