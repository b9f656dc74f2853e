"""The pull-request client: PyGithub, configured for a job queue rather than an interactive script.

Several PyGithub defaults do not fit here. It sleeps ``seconds_between_writes`` (1 s) before every
write and 0.25 s before every request, which adds seconds to each job; both are configuration
here. Its retry policy re-sends ``POST /pulls`` after a 5xx, so a PR that GitHub created but whose
answer was lost comes back as ``422 A pull request already exists``: ``open`` treats that as
success and returns the existing PR. A request that got no answer at all (a timeout, a dropped
connection) may have created the PR too, so ``open`` looks it up by head before creating it again:
opening a PR is idempotent per head branch.

For follow-ups it also reads a pull request's conversation (comments, reviews, inline comments),
an issue, a collaborator's permission (cached briefly) and the failing checks of a commit, and
writes and edits comments; each call goes through the same error and rate-limit handling.

Rate limits are ours, not urllib3's: urllib3 would sleep whatever ``Retry-After`` says (an hour,
inside a worker slot), and with our status list PyGithub never retries a 403. A 403 or 429 that is
a rate limit (``Retry-After``, ``X-RateLimit-Remaining: 0`` with ``X-RateLimit-Reset``, or GitHub's
primary or secondary rate-limit message) is waited out in the job when the wait is at most
``rate_limit_wait`` seconds, and otherwise raised with :attr:`GitHubError.retry_after` for the
pipeline to send the job back to the queue with that countdown. Every failure is counted by kind
(``codeworker_external_errors_total{service="github"}``).
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, TypeVar
from urllib.parse import quote

import github
import requests
from github.GithubException import GithubException, UnknownObjectException
from github.IssueComment import IssueComment
from github.NamedUser import NamedUser
from github.PullRequest import PullRequest
from github.PullRequestComment import PullRequestComment
from github.PullRequestReview import PullRequestReview
from github.Repository import Repository
from github.Requester import Requester
from pydantic import SecretStr
from urllib3.util.retry import Retry

from codeworker.config import Settings
from codeworker.worker import metrics

log = logging.getLogger(__name__)

T = TypeVar("T")

RETRIES = 2
"""How often a request that failed with a 5xx or a dropped connection is re-sent."""

RETRY_BACKOFF = 0.2
"""urllib3 backoff factor: the first retry is immediate, the next after 2 x this, and so on."""

SECONDARY_RATE_WAIT = 60.0
"""Seconds to wait after a secondary rate limit without ``Retry-After`` (GitHub: "at least one
minute")."""

RATE_LIMIT_TRIES = 3
"""Most tries of one call that keeps meeting short rate limits."""

PERMISSION_TTL = 60.0
"""Seconds a collaborator's permission is remembered: a burst of comments costs one request, and
a revoked permission takes effect within a minute."""

ROLES = ("admin", "maintain", "write", "triage", "read")
"""GitHub's repository roles, most to least; a custom role is reported by its base permission."""

FAILING_CONCLUSIONS = frozenset({"failure", "timed_out", "startup_failure"})
"""Check conclusions that mean the commit failed. Not ``cancelled`` (a superseded or stopped run
says nothing about the code) nor ``action_required`` (a person has to act, not the agent)."""

CHECK_TITLE_LIMIT = 200
CHECK_SUMMARY_LIMIT = 4000
"""Characters kept of a failing check's output: a chatty CI must not fill the model's context."""


@dataclass(frozen=True)
class PullRequestRef:
    """What the pipeline keeps of a pull request (the ``pr`` of a job result)."""

    number: int
    url: str
    """The PR's web page (``html_url``), not its API URL."""
    title: str
    draft: bool

    @classmethod
    def of(cls, pull: PullRequest) -> PullRequestRef:
        return cls(number=pull.number, url=pull.html_url, title=pull.title, draft=bool(pull.draft))


@dataclass(frozen=True)
class CheckRunReport:
    """A completed check run: ``conclusion`` is GitHub's (success, neutral, failure...)."""

    name: str
    conclusion: str
    title: str
    summary: str


@dataclass(frozen=True)
class ConversationEntry:
    """One thing said on a pull request: a conversation comment, a review, or an inline comment on
    a line of the diff."""

    kind: Literal["comment", "review", "review_comment"]
    id: int
    author: str
    """The author's login (``name[bot]`` for a GitHub App)."""
    author_type: str
    """GitHub's account type: User, Bot or Organization."""
    body: str
    created_at: datetime
    """When it was posted; for a review, when it was submitted."""
    path: str | None = None
    """An inline comment's file."""
    line: int | None = None
    """An inline comment's line in that file (its original line when the diff has moved on)."""
    review_id: int | None = None
    """The review an inline comment belongs to."""
    state: str | None = None
    """A review's verdict: APPROVED, CHANGES_REQUESTED or COMMENTED."""

    @property
    def by_bot(self) -> bool:
        return self.author_type == "Bot"


@dataclass(frozen=True)
class IssueDetails:
    """An issue (or a pull request seen as one) as a new operation's description needs it."""

    number: int
    title: str
    body: str
    labels: tuple[str, ...]
    author: str
    author_type: str
    url: str
    """Its web page."""
    is_pull_request: bool


class GitHubError(Exception):
    """A GitHub API call failed. The message has the HTTP status and GitHub's own explanation."""

    def __init__(
        self,
        message: str,
        status: int | None = None,
        kind: str = "client_error",
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        """HTTP status of GitHub's answer; None when no answer came (connection, timeout)."""
        self.kind = kind
        """What went wrong: server_error, rate_limited, timeout, connect, client_error."""
        self.retry_after = retry_after
        """For a rate limit: seconds until GitHub accepts requests again."""


def _status_kind(status: int | None) -> str:
    return "server_error" if status is not None and status >= 500 else "client_error"


def rate_limit_wait(exc: GithubException, now: float) -> float | None:
    """Seconds GitHub asks the client to wait before trying again, when ``exc`` is a rate limit;
    None for any other failure. ``now``: the epoch time the answer came."""
    if exc.status not in (403, 429):
        return None
    headers = {name.lower(): value for name, value in (exc.headers or {}).items()}
    after = headers.get("retry-after", "")
    if after.isdigit():
        return float(after)
    reset = headers.get("x-ratelimit-reset", "")
    if headers.get("x-ratelimit-remaining") == "0" and reset.isdigit():
        return max(0.0, int(reset) - now) + 1  # the reset's second may be almost over
    message = _github_message(exc)
    if exc.status == 429 or Requester.isRateLimitError(message) or "rate limit" in message.lower():
        return SECONDARY_RATE_WAIT
    return None


def _github_message(exc: GithubException) -> str:
    """GitHub's ``message`` plus the ``errors[].message`` of a 422, in one line."""
    data = exc.data if isinstance(exc.data, dict) else {}
    parts = [str(data.get("message") or exc.message or "no message")]
    for error in data.get("errors") or []:
        if isinstance(error, dict):
            parts.append(str(error.get("message") or error.get("code") or error))
        else:
            parts.append(str(error))
    return ": ".join(parts)


def _already_exists(exc: GithubException) -> bool:
    return exc.status == 422 and "already exists" in _github_message(exc).lower()


def _trim(text: str | None, limit: int) -> str:
    text = (text or "").strip()
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _author(user: NamedUser | None) -> tuple[str, str]:
    """Login and account type; GitHub shows a deleted account as "ghost"."""
    return (user.login, user.type) if user is not None else ("ghost", "User")


class _Retry(github.GithubRetry):
    """PyGithub's retry of 5xx answers and dropped connections, leaving every 403 and 429 to
    :class:`PullRequests` (the module's docstring says why)."""

    def increment(  # type: ignore[override]
        self,
        method: str | None = None,
        url: str | None = None,
        response: Any = None,
        error: Exception | None = None,
        _pool: Any = None,
        _stacktrace: Any = None,
    ) -> Retry:
        if response is not None and response.status in (403, 429):
            content = self.get_content(response, url)
            try:
                data = json.loads(content)
            except ValueError:
                data = {
                    "message": content.decode(errors="replace") if isinstance(content, bytes) else content
                }
            raise Requester.createException(response.status, dict(response.headers), data)
        return super().increment(method, url, response, error, _pool, _stacktrace)


class PullRequests:
    """Opens and finds pull requests, and reads and writes what is said on them, through one
    PyGithub client (one HTTP connection pool).

    A worker builds one per process; it is thread-safe as far as PyGithub's ``Requester`` is.
    """

    def __init__(
        self,
        api_url: str,
        token: SecretStr,
        seconds_between_writes: float,
        timeout: float = 30,
        seconds_between_requests: float | None = None,
        rate_limit_wait: float = 60.0,
        permission_ttl: float = PERMISSION_TTL,
    ) -> None:
        self._token = token
        self.rate_limit_wait = rate_limit_wait
        """Longest wait for a rate limit inside the job; a longer one is raised (``retry_after``)."""
        self.permission_ttl = permission_ttl
        """Seconds an answer of :meth:`permission` is reused."""
        self._permissions: dict[tuple[str, str, str], tuple[float, str]] = {}
        self._permissions_lock = threading.Lock()
        self._github = github.Github(
            base_url=api_url.rstrip("/"),
            auth=github.Auth.Token(token.get_secret_value()),
            # PyGithub asserts an int here; round up so a sub-second timeout does not become 0.
            timeout=max(1, math.ceil(timeout)),
            retry=_Retry(
                total=RETRIES,
                backoff_factor=RETRY_BACKOFF,
                status_forcelist=[500, 502, 503, 504],
                # Answer the last 5xx as a GithubException instead of urllib3's MaxRetryError.
                raise_on_status=False,
                # Rate limits are handled here (the module's docstring says why).
                respect_retry_after_header=False,
            ),
            seconds_between_requests=seconds_between_requests,
            seconds_between_writes=seconds_between_writes,
            # No GET /repos/{owner}/{repo} before each call: the repository object is only a URL.
            lazy=True,
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> PullRequests:
        return cls(
            settings.github_api_url,
            settings.github_token,
            settings.github_seconds_between_writes,
            timeout=settings.github_timeout,
            rate_limit_wait=settings.github_rate_limit_wait,
        )

    def close(self) -> None:
        self._github.close()

    def __enter__(self) -> PullRequests:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(
        self,
        owner: str,
        name: str,
        head: str,
        base: str,
        title: str,
        body: str,
        draft: bool,
        labels: Sequence[str],
    ) -> PullRequestRef:
        """Open a PR from ``head`` into ``base``, or return the one already open from ``head``.

        Either way ``labels`` are on it afterwards (labels are only added, never removed).
        """
        action = f"opening a pull request {head} -> {base} on {owner}/{name}"
        repo = self._repo(owner, name)

        def create() -> PullRequest:
            try:
                return repo.create_pull(base=base, head=head, title=title, body=body, draft=draft)
            except GithubException as exc:
                if not _already_exists(exc):
                    raise
                existing = self._find_open(repo, owner, head)
                if existing is None:
                    # GitHub said it exists, then listed none open: a race with a close; let it surface.
                    raise
                return existing

        try:
            pull = self._call(action, create)
        except GitHubError as exc:
            if exc.status is not None:
                raise
            # No answer: GitHub may have created it all the same. Look before creating again.
            found = self._call(action, lambda: self._find_open(repo, owner, head))
            pull = found if found is not None else self._call(action, create)
        if labels:
            self._call(action, lambda: pull.add_to_labels(*labels))
        return PullRequestRef.of(pull)

    def check_run(self, owner: str, name: str, head_sha: str, check: CheckRunReport) -> None:
        """Publish ``check`` as a completed check run on ``head_sha`` (GitHub Apps only: a personal
        token gets 403, raised as GitHubError like any other failure)."""
        self._call(
            f"creating check run {check.name} on {owner}/{name}@{head_sha[:12]}",
            lambda: self._repo(owner, name).create_check_run(
                name=check.name,
                head_sha=head_sha,
                status="completed",
                conclusion=check.conclusion,
                output={"title": check.title, "summary": check.summary},
            ),
        )

    def comment(self, owner: str, name: str, number: int, body: str) -> int:
        """Comment on issue or pull request ``number``; returns the comment's id.

        Not idempotent: GitHub has no idempotency key for comments, so an answer lost after GitHub
        made the comment, then retried, leaves two. A comment kept up to date (progress) is made
        once and then edited with :meth:`edit_comment`.
        """
        return self._call(
            f"commenting on {owner}/{name}#{number}",
            lambda: self._repo(owner, name).get_issue(number).create_comment(body).id,
        )

    def edit_comment(self, owner: str, name: str, comment_id: int, body: str) -> None:
        """Replace the body of issue comment ``comment_id`` (one request, no read first)."""
        url = f"{self._repo(owner, name).url}/issues/comments/{int(comment_id)}"
        self._call(
            f"editing comment {comment_id} on {owner}/{name}",
            lambda: self._github.requester.requestJsonAndCheck("PATCH", url, input={"body": body}),
        )

    def conversation(self, owner: str, name: str, number: int) -> list[ConversationEntry]:
        """Everything said on pull request ``number``, oldest first: its conversation comments, its
        submitted reviews that have a body, and its inline comments with their file and line."""
        repo = self._repo(owner, name)
        # Lazy objects: no request until they are listed, and those lists go through _call.
        issue, pull = repo.get_issue(number), repo.get_pull(number)
        action = f"reading the conversation of {owner}/{name}#{number}"
        comments = self._call(action, lambda: [self._comment_entry(c) for c in issue.get_comments()])
        reviews = self._call(
            action,
            lambda: [
                self._review_entry(r) for r in pull.get_reviews() if r.body and r.submitted_at is not None
            ],
        )
        inline = self._call(action, lambda: [self._inline_entry(c) for c in pull.get_review_comments()])
        # A stable sort: within one second a review comes before its inline comments.
        return sorted([*comments, *reviews, *inline], key=lambda entry: entry.created_at)

    def permission(self, owner: str, name: str, login: str) -> str:
        """``login``'s role on the repository: admin, maintain, write, triage, read or none (no
        collaborator: GitHub answers 404). A custom role counts as its base permission.

        Answers are cached per (repository, login) for :attr:`permission_ttl` seconds (60 by
        default) in this client, which a worker builds once per process: a burst of comments costs
        one request, and a change of permission is seen within the TTL. Failures are not cached.
        """
        key = (owner.lower(), name.lower(), login.lower())
        with self._permissions_lock:
            cached = self._permissions.get(key)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        role = self._call(
            f"asking the permission of {login} on {owner}/{name}", lambda: self._role(owner, name, login)
        )
        now = time.monotonic()
        with self._permissions_lock:
            # Expired answers go, so the cache holds only the last TTL's commenters.
            self._permissions = {k: v for k, v in self._permissions.items() if v[0] > now}
            self._permissions[key] = (now + self.permission_ttl, role)
        return role

    def failing_checks(self, owner: str, name: str, head_sha: str) -> list[CheckRunReport]:
        """The latest check runs on commit ``head_sha`` that failed (:data:`FAILING_CONCLUSIONS`),
        by name, each with its output's title and summary trimmed."""

        def read() -> list[CheckRunReport]:
            runs = self._repo(owner, name).get_commit(head_sha).get_check_runs(filter="latest")
            return [
                CheckRunReport(
                    name=run.name,
                    conclusion=run.conclusion,
                    title=_trim(run.output.title, CHECK_TITLE_LIMIT),
                    summary=_trim(run.output.summary, CHECK_SUMMARY_LIMIT),
                )
                for run in runs
                if run.conclusion in FAILING_CONCLUSIONS
            ]

        checks = self._call(f"reading the checks of {owner}/{name}@{head_sha[:12]}", read)
        return sorted(checks, key=lambda check: check.name)

    def issue(self, owner: str, name: str, number: int) -> IssueDetails:
        """Issue ``number``: title, body, labels and author."""

        def read() -> IssueDetails:
            issue = self._repo(owner, name).get_issue(number)
            author, author_type = _author(issue.user)
            return IssueDetails(
                number=issue.number,
                title=issue.title,
                body=issue.body or "",
                labels=tuple(label.name for label in issue.labels),
                author=author,
                author_type=author_type,
                url=issue.html_url,
                is_pull_request=issue.pull_request is not None,
            )

        return self._call(f"reading issue {owner}/{name}#{number}", read)

    # -- private -------------------------------------------------------------------------------

    def _repo(self, owner: str, name: str) -> Repository:
        return self._github.get_repo(f"{owner}/{name}")

    @staticmethod
    def _find_open(repo: Repository, owner: str, head: str) -> PullRequest | None:
        # GitHub ignores a ``head`` filter without the ``user:`` part and lists every open PR.
        label = head if ":" in head else f"{owner}:{head}"
        return next(iter(repo.get_pulls(state="open", head=label)), None)

    def _role(self, owner: str, name: str, login: str) -> str:
        # One request for both names: PyGithub's helpers each return one and ask again.
        url = f"{self._repo(owner, name).url}/collaborators/{quote(login, safe='')}/permission"
        try:
            _, data = self._github.requester.requestJsonAndCheck("GET", url)
        except UnknownObjectException:
            return "none"
        role = data.get("role_name")
        return role if role in ROLES else str(data.get("permission") or "none")

    @staticmethod
    def _comment_entry(comment: IssueComment) -> ConversationEntry:
        author, author_type = _author(comment.user)
        return ConversationEntry(
            kind="comment",
            id=comment.id,
            author=author,
            author_type=author_type,
            body=comment.body or "",
            created_at=comment.created_at,
        )

    @staticmethod
    def _review_entry(review: PullRequestReview) -> ConversationEntry:
        author, author_type = _author(review.user)
        return ConversationEntry(
            kind="review",
            id=review.id,
            author=author,
            author_type=author_type,
            body=review.body,
            created_at=review.submitted_at,
            state=review.state,
        )

    @staticmethod
    def _inline_entry(comment: PullRequestComment) -> ConversationEntry:
        author, author_type = _author(comment.user)
        return ConversationEntry(
            kind="review_comment",
            id=comment.id,
            author=author,
            author_type=author_type,
            body=comment.body or "",
            created_at=comment.created_at,
            path=comment.path,
            line=comment.line if comment.line is not None else comment.original_line,
            review_id=comment.pull_request_review_id,
        )

    def _call(self, action: str, call: Callable[[], T]) -> T:
        """``call()``, its failures as :class:`GitHubError`; a short rate limit waited out and
        tried again (at most :data:`RATE_LIMIT_TRIES` times)."""
        for attempt in range(1, RATE_LIMIT_TRIES + 1):
            try:
                with self._errors(action):
                    return call()
            except GitHubError as exc:
                wait = exc.retry_after
                if wait is None or wait > self.rate_limit_wait or attempt == RATE_LIMIT_TRIES:
                    raise
                log.warning("GitHub rate limit while %s; waiting %.0f s", action, wait)
                time.sleep(wait)
        raise AssertionError("unreachable")

    @contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        """Turn PyGithub's and requests' exceptions into GitHubError, with the token scrubbed, and
        count each by kind."""
        try:
            yield
        except GithubException as exc:
            retry_after = rate_limit_wait(exc, time.time())
            status = exc.status
            kind = "rate_limited" if retry_after is not None else _status_kind(status)
            metrics.external_error("github", kind)
            message = f"GitHub API {status} while {action}: {_github_message(exc)}"
            if retry_after is not None:
                message += f" (rate limited: try again in {retry_after:.0f} s)"
            raise GitHubError(self._scrub(message), status, kind, retry_after) from exc
        except requests.RequestException as exc:
            # urllib3's retries end in a ConnectionError whose reason may be a read timeout.
            timed_out = isinstance(exc, requests.Timeout) or "timed out" in str(exc).lower()
            kind = "timeout" if timed_out else "connect"
            metrics.external_error("github", kind)
            message = f"GitHub API unreachable while {action}: {type(exc).__name__}: {exc}"
            raise GitHubError(self._scrub(message), None, kind) from exc

    def _scrub(self, text: Any) -> str:
        secret = self._token.get_secret_value()
        text = str(text)
        return text.replace(secret, "***") if secret else text
