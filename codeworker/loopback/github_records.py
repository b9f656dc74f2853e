"""The GitHub stand-in's records: the request log, repositories with what they hold, and faults.

``RecordedRequest`` is one entry of the log every request is kept in; ``Repo`` is a repository as
the stand-in holds it (pull requests, issues, comments, reviews, collaborators, check suites and
runs), each as the JSON GitHub returns it; ``Fault`` is a failure a test asked for with
``fail_next``; ``error_reply`` and ``ValidationFailed`` answer in GitHub's error shapes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

DOCS_URL = "https://docs.github.com/rest"

ROLES = {"admin": "admin", "maintain": "write", "write": "write", "triage": "read", "read": "read"}
"""Each repository role and the legacy base ``permission`` GitHub reports for it beside
``role_name`` (maintain counts as write, triage as read)."""

CONCLUSIONS = ("action_required", "cancelled", "timed_out", "failure", "neutral", "success", "skipped")
"""A check run's conclusions, worst first: a check suite concludes with its worst run's."""

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
    """One repository's state, every object in the JSON shape GitHub's REST API answers with."""

    owner: str
    name: str
    id: int
    default_branch: str = "main"
    web_url: str | None = None
    """Its web page (``html_url``; ``clone_url`` is this plus ``.git``); None: on the stand-in."""
    pulls: list[dict[str, Any]] = field(default_factory=list)
    issues: list[dict[str, Any]] = field(default_factory=list)
    """Issues that are not pull requests (GitHub numbers both in one sequence)."""
    comments: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    """Issue comments by issue or pull request number, oldest first."""
    reviews: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    """Pull request reviews by pull request number, oldest first."""
    review_comments: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    """Inline review comments by pull request number, oldest first."""
    collaborators: dict[str, str] = field(default_factory=dict)
    """Role (admin, maintain, write, triage, read) by login; anyone else is no collaborator."""
    check_suites: list[dict[str, Any]] = field(default_factory=list)
    check_runs: list[dict[str, Any]] = field(default_factory=list)

    def next_number(self) -> int:
        return len(self.pulls) + len(self.issues) + 1

    def issue_or_pull(self, number: int | str) -> dict[str, Any] | None:
        """The issue or pull request numbered ``number`` (a pull request is an issue too)."""
        return next((i for i in (*self.pulls, *self.issues) if str(i["number"]) == str(number)), None)

    def comment(self, comment_id: int | str) -> dict[str, Any] | None:
        every = (c for comments in self.comments.values() for c in comments)
        return next((c for c in every if str(c["id"]) == str(comment_id)), None)


def label_json(name: str) -> dict[str, Any]:
    return {
        "id": abs(hash(name)) % 10**8,
        "node_id": f"LA_{name}",
        "name": name,
        "color": "ededed",
        "default": False,
        "description": None,
    }


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def error_reply(status: int, message: str, **extra: Any) -> Reply:
    return status, {"message": message, **extra, "documentation_url": DOCS_URL, "status": str(status)}


class ValidationFailed(Exception):
    """Raised inside a route to answer GitHub's ``422 Validation Failed`` shape."""

    def __init__(
        self,
        code: str,
        message: str | None = None,
        field_name: str | None = None,
        resource: str = "PullRequest",
    ) -> None:
        super().__init__(message or code)
        error: dict[str, str] = {"resource": resource, "code": code}
        if field_name is not None:
            error["field"] = field_name
        if message is not None:
            error["message"] = message
        self.error = error
