"""The pull-request client: PyGithub, configured for a job queue rather than an interactive script.

Several PyGithub defaults do not fit here. It sleeps ``seconds_between_writes`` (1 s) before every
write and 0.25 s before every request, which adds seconds to each job; both are configuration
here. Its retry policy re-sends ``POST /pulls`` after a 5xx, so a PR that GitHub created but whose
answer was lost comes back as ``422 A pull request already exists``: ``open`` treats that as
success and returns the existing PR. A request that got no answer at all (a timeout, a dropped
connection) may have created the PR too, so ``open`` looks it up by head before creating it again:
opening a PR is idempotent per head branch.

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
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import github
import requests
from github.GithubException import GithubException
from github.PullRequest import PullRequest
from github.Repository import Repository
from github.Requester import Requester
from pydantic import SecretStr
from urllib3.util.retry import Retry

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
    """Opens and finds pull requests through one PyGithub client (one HTTP connection pool).

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
    ) -> None:
        self._token = token
        self.rate_limit_wait = rate_limit_wait
        """Longest wait for a rate limit inside the job; a longer one is raised (``retry_after``)."""
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

    # -- private -------------------------------------------------------------------------------

    def _repo(self, owner: str, name: str) -> Repository:
        return self._github.get_repo(f"{owner}/{name}")

    @staticmethod
    def _find_open(repo: Repository, owner: str, head: str) -> PullRequest | None:
        # GitHub ignores a ``head`` filter without the ``user:`` part and lists every open PR.
        label = head if ":" in head else f"{owner}:{head}"
        return next(iter(repo.get_pulls(state="open", head=label)), None)

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
