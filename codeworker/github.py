"""The pull-request client: PyGithub, configured for a job queue rather than an interactive script.

Two PyGithub defaults do not fit here. It sleeps ``seconds_between_writes`` (1 s) before every
write and 0.25 s before every request, which adds seconds to each job; both are configuration
here. And its retry policy re-sends ``POST /pulls`` after a 5xx, so a PR that GitHub created but
whose answer was lost comes back as ``422 A pull request already exists``: ``open`` treats that
as success and returns the existing PR, so opening a PR is idempotent per head branch.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import github
import requests
from github.GithubException import GithubException
from github.PullRequest import PullRequest
from github.Repository import Repository
from pydantic import SecretStr

RETRIES = 2
"""How often a request that failed with a 5xx or a dropped connection is re-sent."""

RETRY_BACKOFF = 0.2
"""urllib3 backoff factor: the first retry is immediate, the next after 2 x this, and so on."""

RATE_LIMIT_MAX_WAIT = 60.0
"""Longest a rate-limited request waits for its reset before it fails instead."""


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

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        """HTTP status of GitHub's answer; None when no answer came (connection, timeout)."""


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
    ) -> None:
        self._token = token
        self._github = github.Github(
            base_url=api_url.rstrip("/"),
            auth=github.Auth.Token(token.get_secret_value()),
            # PyGithub asserts an int here; round up so a sub-second timeout does not become 0.
            timeout=max(1, math.ceil(timeout)),
            retry=github.GithubRetry(
                total=RETRIES,
                backoff_factor=RETRY_BACKOFF,
                status_forcelist=[500, 502, 503, 504],
                # Answer the last 5xx as a GithubException instead of urllib3's MaxRetryError.
                raise_on_status=False,
                max_rate_limit_wait=RATE_LIMIT_MAX_WAIT,
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
        with self._errors(f"opening a pull request {head} -> {base} on {owner}/{name}"):
            repo = self._repo(owner, name)
            try:
                pull = repo.create_pull(base=base, head=head, title=title, body=body, draft=draft)
            except GithubException as exc:
                if not _already_exists(exc):
                    raise
                existing = self._find_open(repo, owner, head)
                if existing is None:
                    # GitHub said it exists, then listed none open: a race with a close; let it surface.
                    raise
                pull = existing
            if labels:
                pull.add_to_labels(*labels)
            return PullRequestRef.of(pull)

    def check_run(self, owner: str, name: str, head_sha: str, check: CheckRunReport) -> None:
        """Publish ``check`` as a completed check run on ``head_sha`` (GitHub Apps only: a personal
        token gets 403, raised as GitHubError like any other failure)."""
        with self._errors(f"creating check run {check.name} on {owner}/{name}@{head_sha[:12]}"):
            self._repo(owner, name).create_check_run(
                name=check.name,
                head_sha=head_sha,
                status="completed",
                conclusion=check.conclusion,
                output={"title": check.title, "summary": check.summary},
            )

    # -- private -------------------------------------------------------------------------------

    def _repo(self, owner: str, name: str) -> Repository:
        return self._github.get_repo(f"{owner}/{name}")

    @staticmethod
    def _find_open(repo: Repository, owner: str, head: str) -> PullRequest | None:
        # GitHub ignores a ``head`` filter without the ``user:`` part and lists every open PR.
        label = head if ":" in head else f"{owner}:{head}"
        return next(iter(repo.get_pulls(state="open", head=label)), None)

    @contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        """Turn PyGithub's and requests' exceptions into GitHubError, with the token scrubbed."""
        try:
            yield
        except GithubException as exc:
            message = f"GitHub API {exc.status} while {action}: {_github_message(exc)}"
            raise GitHubError(self._scrub(message), exc.status) from exc
        except requests.RequestException as exc:
            message = f"GitHub API unreachable while {action}: {type(exc).__name__}: {exc}"
            raise GitHubError(self._scrub(message)) from exc

    def _scrub(self, text: Any) -> str:
        secret = self._token.get_secret_value()
        text = str(text)
        return text.replace(secret, "***") if secret else text
