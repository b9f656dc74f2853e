"""A GitHub REST stand-in: a real HTTP server on loopback that PyGithub talks to through ``base_url``.

It keeps just enough state for the calls codeworker makes (repositories, pull requests, issues,
labels, issue comments, reviews and their inline comments, collaborators' permissions, check
suites and runs), answers in GitHub's JSON shapes (including its error bodies), records every
request, and can be told to fail the next matching request with a 5xx, optionally *after* doing
the work, which is how a client retry of ``POST /pulls`` meets ``422 A pull request already
exists``. Its ``webhooks`` send the deliveries GitHub would send about that state
(:mod:`codeworker.loopback.github_webhooks`).

The shapes are GitHub's published ones, trimmed to the fields a client reads: the REST schemas and
examples of ``@octokit/openapi`` 23.0.2 (``generated/api.github.com.json``). Test helpers
(``add_issue``, ``add_comment``, ``add_review``, ``set_permission``, ``add_check_run``) stand for
what people and CI do on github.com.
"""

from __future__ import annotations

import itertools
import json
import re
import threading
import time
from collections.abc import Mapping, Sequence
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlsplit

from codeworker.loopback.github_records import (
    CONCLUSIONS,
    JSON,
    ROLES,
    Fault,
    RecordedRequest,
    Reply,
    Repo,
    ValidationFailed,
    error_reply,
    label_json,
    now,
)
from codeworker.loopback.github_routes import ROUTES
from codeworker.loopback.github_webhooks import Webhooks
from codeworker.loopback.server import LoopbackServer

REVIEW_STATES = ("APPROVED", "CHANGES_REQUESTED", "COMMENTED")
"""The states of a submitted review, as the REST API spells them."""


def _copy(value: JSON) -> JSON:
    """A deep copy: a test must not reach into the stand-in's state."""
    return json.loads(json.dumps(value))


class GitHubStub(LoopbackServer):
    """GitHub's REST API for one token, on ``127.0.0.1`` and a free port.

    Every repository exists on first use (default branch ``main``); ``add_repo`` sets another one.
    State is guarded by one lock, so concurrent clients see GitHub's one-open-PR-per-head rule.
    """

    login = "codeworker-bot"
    """The token's user: the author of every pull request and comment made through the API."""

    app_slug = "codeworker"
    """The GitHub App whose check suite holds the check runs made through the API."""

    def __init__(self, token: str) -> None:
        super().__init__()
        self.token = token
        self.requests: list[RecordedRequest] = []
        self._repos: dict[tuple[str, str], Repo] = {}
        self._faults: list[Fault] = []
        self._lock = threading.Lock()
        self._ids = itertools.count(1000)
        self.stopping = threading.Event()
        """Set when the stand-in stops: an answer held back (``delay_next``) goes out then."""
        self.webhooks = Webhooks(self)
        """Builds and sends signed webhook deliveries about this stand-in's state."""

    def stop(self) -> None:
        self.stopping.set()
        super().stop()

    @property
    def url(self) -> str:
        """Base API URL, what PyGithub takes as ``base_url``."""
        return f"http://127.0.0.1:{self.port}"

    # -- test helpers ------------------------------------------------------------------------

    def add_repo(
        self, owner: str, name: str, default_branch: str = "main", *, clone_url: str | None = None
    ) -> None:
        """Set a repository's default branch and, with ``clone_url`` (a git server's), where it
        lives: its ``html_url`` and ``clone_url``, and so the repository a webhook names, are then
        that server's, as on github.com the API and the repositories have different hosts."""
        with self._lock:
            repo = self._repo(owner, name)
            repo.default_branch = default_branch
            if clone_url is not None:
                repo.web_url = clone_url.removesuffix(".git")

    def add_issue(
        self,
        owner: str,
        name: str,
        title: str,
        body: str = "",
        *,
        labels: Sequence[str] = (),
        user: str = "octocat",
    ) -> dict[str, Any]:
        """Open an issue as ``user``; its number follows the pull requests' (one sequence)."""
        with self._lock:
            repo = self._repo(owner, name)
            number = repo.next_number()
            api = self._api(repo)
            stamp = now()
            issue: dict[str, Any] = {
                "url": f"{api}/issues/{number}",
                "repository_url": api,
                "labels_url": f"{api}/issues/{number}/labels{{/name}}",
                "comments_url": f"{api}/issues/{number}/comments",
                "html_url": f"{self._html(repo)}/issues/{number}",
                "id": next(self._ids),
                "node_id": f"I_{repo.id}_{number}",
                "number": number,
                "title": title,
                "user": self._user(user),
                "labels": [label_json(n) for n in dict.fromkeys(labels)],
                "state": "open",
                "state_reason": None,
                "locked": False,
                "active_lock_reason": None,
                "assignee": None,
                "assignees": [],
                "milestone": None,
                "comments": 0,
                "created_at": stamp,
                "updated_at": stamp,
                "closed_at": None,
                "author_association": self._association(repo, user),
                "body": body,
            }
            repo.issues.append(issue)
            return _copy(issue)

    def add_comment(
        self, owner: str, name: str, number: int, body: str, *, user: str, created_at: str | None = None
    ) -> dict[str, Any]:
        """Comment on an issue or a pull request's conversation as ``user``, now or at
        ``created_at`` (GitHub's ``2024-05-01T12:00:00Z`` form) for a conversation with a past."""
        with self._lock:
            repo = self._repo(owner, name)
            comment = self._new_comment(repo, self._item(repo, number), user, body)
            if created_at is not None:
                comment.update(created_at=created_at, updated_at=created_at)
            return _copy(comment)

    def add_review(
        self,
        owner: str,
        name: str,
        number: int,
        *,
        user: str,
        body: str = "",
        state: str = "COMMENTED",
        comments: Sequence[Mapping[str, Any]] = (),
        commit_id: str | None = None,
        submitted_at: str | None = None,
    ) -> dict[str, Any]:
        """Submit a review of pull request ``number`` as ``user``, now or at ``submitted_at``, with
        ``comments`` on lines of the diff given as GitHub's create-review call takes them: ``path``,
        ``line``, ``body`` (and optionally ``side``, ``start_line``, ``diff_hunk``). Returns the
        review."""
        if state not in REVIEW_STATES:
            raise ValueError(f"a submitted review is {', '.join(REVIEW_STATES)}, not {state!r}")
        with self._lock:
            repo = self._repo(owner, name)
            pull = self._pull(repo, str(number))
            if pull is None:
                raise KeyError(f"{owner}/{name} has no pull request #{number}")
            review_id = next(self._ids)
            html = f"{pull['html_url']}#pullrequestreview-{review_id}"
            review: dict[str, Any] = {
                "id": review_id,
                "node_id": f"PRR_{review_id}",
                "user": self._user(user),
                "body": body,
                "state": state,
                "html_url": html,
                "pull_request_url": pull["url"],
                "author_association": self._association(repo, user),
                "_links": {"html": {"href": html}, "pull_request": {"href": pull["url"]}},
                "submitted_at": submitted_at or now(),
                "commit_id": commit_id or pull["head"]["sha"],
            }
            repo.reviews.setdefault(pull["number"], []).append(review)
            for comment in comments:
                self._new_review_comment(repo, pull, review, comment)
            return _copy(review)

    def set_permission(self, owner: str, name: str, login: str, role: str) -> None:
        """Give ``login`` a role on the repository: admin, maintain, write, triage or read; "none"
        (everyone's to begin with) makes them no collaborator, whom GitHub answers with 404."""
        if role != "none" and role not in ROLES:
            raise ValueError(f"a role is none or one of {', '.join(ROLES)}, not {role!r}")
        with self._lock:
            collaborators = self._repo(owner, name).collaborators
            if role == "none":
                collaborators.pop(login, None)
            else:
                collaborators[login] = role

    def add_check_run(
        self,
        owner: str,
        name: str,
        head_sha: str,
        check_name: str,
        *,
        conclusion: str = "failure",
        title: str | None = None,
        summary: str | None = None,
        text: str | None = None,
        head_branch: str | None = None,
        app: str = "github-actions",
    ) -> dict[str, Any]:
        """A completed check run of CI (the GitHub App ``app``) on commit ``head_sha``, in that app's
        check suite for the commit. With ``head_branch``, the open pull requests from that branch
        are the run's and the suite's ``pull_requests``, as GitHub lists them."""
        if conclusion not in CONCLUSIONS:
            raise ValueError(f"a conclusion is one of {', '.join(CONCLUSIONS)}, not {conclusion!r}")
        output = {"title": title, "summary": summary, "text": text}
        with self._lock:
            repo = self._repo(owner, name)
            suite = self._suite(repo, app, head_sha, head_branch)
            return _copy(self._new_check_run(repo, suite, check_name, "completed", conclusion, output))

    def issue_comments(self, owner: str, repo: str, number: int) -> list[dict[str, Any]]:
        """The comments on an issue or a pull request's conversation, oldest first."""
        with self._lock:
            return _copy(self._repo(owner, repo).comments.get(number, []))

    def review_comments(self, owner: str, repo: str, number: int) -> list[dict[str, Any]]:
        """The inline comments on a pull request's diff, oldest first."""
        with self._lock:
            return _copy(self._repo(owner, repo).review_comments.get(number, []))

    @property
    def pulls(self) -> dict[str, list[dict[str, Any]]]:
        """Every pull request, keyed by ``owner/repo`` (copies; the stand-in keeps its own)."""
        with self._lock:
            return {
                f"{o}/{n}": [json.loads(json.dumps(p)) for p in repo.pulls]
                for (o, n), repo in self._repos.items()
            }

    def pull_requests(self, owner: str, repo: str) -> list[dict[str, Any]]:
        """The pull requests of one repository, oldest first."""
        return self.pulls.get(f"{owner}/{repo}", [])

    def check_runs(self, owner: str, repo: str) -> list[dict[str, Any]]:
        """The check runs of one repository (made through the API or ``add_check_run``), oldest
        first."""
        with self._lock:
            return _copy(self._repo(owner, repo).check_runs)

    def fail_next(
        self,
        method: str,
        path_regex: str,
        status: int = 502,
        after_processing: bool = True,
        times: int = 1,
    ) -> None:
        """Answer the next ``times`` requests whose method matches and whose path (without the query)
        matches ``path_regex`` (``re.search``) with ``status``. With ``after_processing`` the request
        takes effect first (a PR really gets created), as when a proxy loses GitHub's answer."""
        with self._lock:
            self._faults.append(
                Fault(method.upper(), re.compile(path_regex), status, after_processing, times)
            )

    def rate_limit_next(
        self,
        method: str,
        path_regex: str,
        *,
        status: int = 403,
        retry_after: int | None = None,
        reset_in: int | None = None,
        secondary: bool = False,
        times: int = 1,
    ) -> None:
        """Answer the next ``times`` matching requests as GitHub answers a rate limit, before
        doing anything: ``retry_after`` as ``Retry-After``, ``reset_in`` seconds as a primary
        limit's ``X-RateLimit-Remaining: 0`` and ``X-RateLimit-Reset``, ``secondary`` with
        GitHub's secondary-limit message."""
        headers: dict[str, str] = {}
        if retry_after is not None:
            headers["Retry-After"] = str(retry_after)
        if reset_in is not None:
            headers |= {"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": str(int(time.time()) + reset_in)}
        message = (
            "You have exceeded a secondary rate limit. Please wait a few minutes before you try again."
            if secondary
            else "API rate limit exceeded for user ID 1."
        )
        with self._lock:
            self._faults.append(
                Fault(method.upper(), re.compile(path_regex), status, False, times, message, headers)
            )

    def delay_next(self, method: str, path_regex: str, seconds: float, times: int = 1) -> None:
        """Do the next ``times`` matching requests, then hold each answer back ``seconds``: a
        client whose timeout is shorter sees no answer although the work was done."""
        with self._lock:
            self._faults.append(
                Fault(method.upper(), re.compile(path_regex), 200, True, times, delay=seconds)
            )

    def requests_for(self, method: str, path_regex: str) -> list[RecordedRequest]:
        """Recorded requests with this method whose path, without the query, matches ``path_regex``
        (``re.search``), as ``fail_next`` matches them."""
        pattern = re.compile(path_regex)
        with self._lock:
            return [
                r
                for r in self.requests
                if r.method == method.upper() and pattern.search(urlsplit(r.path).path)
            ]

    # -- dispatch (called from handler threads) ----------------------------------------------

    def _handle(
        self, method: str, raw_path: str, headers: dict[str, str], body: JSON
    ) -> tuple[Reply, Fault | None]:
        """The answer, and the fault that shaped it (its headers and delay are the handler's)."""
        split = urlsplit(raw_path)
        query = {k: v[-1] for k, v in parse_qs(split.query).items()}
        with self._lock:
            self.requests.append(RecordedRequest(method, raw_path, headers, body))
            fault = self._take_fault(method, split.path)
            if fault is not None and not fault.after_processing:
                return error_reply(fault.status, fault.message), fault
            if not self._authorized(headers):
                return error_reply(401, "Bad credentials"), None
            reply = self._route(method, split.path, query, body)
            if fault is not None and fault.delay == 0:
                return error_reply(fault.status, fault.message), fault
            return reply, fault

    def _take_fault(self, method: str, path: str) -> Fault | None:
        for fault in self._faults:
            if fault.method == method and fault.pattern.search(path):
                fault.remaining -= 1
                if fault.remaining <= 0:
                    self._faults.remove(fault)
                return fault
        return None

    def _authorized(self, headers: dict[str, str]) -> bool:
        value = next((v for k, v in headers.items() if k.lower() == "authorization"), "")
        scheme, _, credential = value.partition(" ")
        return scheme.lower() in {"token", "bearer"} and credential == self.token

    def _route(self, method: str, path: str, query: dict[str, str], body: JSON) -> Reply:
        for route_method, pattern, route in ROUTES:
            if route_method == method and (match := pattern.fullmatch(path)):
                try:
                    return route(self, match, query, body)
                except ValidationFailed as exc:
                    return error_reply(422, "Validation Failed", errors=[exc.error])
        return error_reply(404, "Not Found")

    # -- state and JSON shapes ----------------------------------------------------------------

    def _repo(self, owner: str, name: str) -> Repo:
        key = (owner, name)
        if key not in self._repos:
            self._repos[key] = Repo(owner, name, next(self._ids))
        return self._repos[key]

    def _api(self, repo: Repo) -> str:
        return f"{self.url}/repos/{repo.owner}/{repo.name}"

    def _html(self, repo: Repo) -> str:
        return repo.web_url or f"{self.url}/{repo.owner}/{repo.name}"

    def _user(self, login: str) -> dict[str, Any]:
        """A user; a GitHub App's account is named ``<app>[bot]`` and is of type Bot."""
        return {
            "login": login,
            "id": abs(hash(login)) % 10**8,
            "node_id": f"U_{login}",
            "type": "Bot" if login.endswith("[bot]") else "User",
            "site_admin": False,
            "url": f"{self.url}/users/{login}",
            "html_url": f"{self.url}/{login}",
        }

    def _association(self, repo: Repo, login: str) -> str:
        if login == repo.owner:
            return "OWNER"
        return "COLLABORATOR" if login in repo.collaborators else "NONE"

    def _item(self, repo: Repo, number: int | str) -> dict[str, Any]:
        """The issue or pull request numbered ``number``, for a test helper (KeyError if none)."""
        item = repo.issue_or_pull(number)
        if item is None:
            raise KeyError(f"{repo.owner}/{repo.name} has no issue or pull request #{number}")
        return item

    def _issue_json(self, item: dict[str, Any]) -> dict[str, Any]:
        """An issue as ``GET /issues/{n}`` answers; for a pull request, its issue side, which
        carries ``pull_request`` (how a client tells the two apart)."""
        if "head" not in item:
            return item
        keys = ("id", "node_id", "number", "title", "body", "user", "labels", "state", "locked")
        issue = {k: item[k] for k in keys}
        issue.update(
            url=item["issue_url"],
            html_url=item["html_url"],
            comments_url=item["comments_url"],
            assignee=None,
            assignees=item["assignees"],
            milestone=item["milestone"],
            comments=item["comments"],
            created_at=item["created_at"],
            updated_at=item["updated_at"],
            closed_at=item["closed_at"],
            author_association=item["author_association"],
            draft=item["draft"],
            pull_request={
                "url": item["url"],
                "html_url": item["html_url"],
                "diff_url": item["diff_url"],
                "patch_url": item["patch_url"],
                "merged_at": item["merged_at"],
            },
        )
        return issue

    def _new_comment(self, repo: Repo, item: dict[str, Any], login: str, body: str) -> dict[str, Any]:
        comment_id = next(self._ids)
        stamp = now()
        comment = {
            "url": f"{self._api(repo)}/issues/comments/{comment_id}",
            "html_url": f"{item['html_url']}#issuecomment-{comment_id}",
            "issue_url": f"{self._api(repo)}/issues/{item['number']}",
            "id": comment_id,
            "node_id": f"IC_{comment_id}",
            "user": self._user(login),
            "created_at": stamp,
            "updated_at": stamp,
            "author_association": self._association(repo, login),
            "body": body,
        }
        repo.comments.setdefault(item["number"], []).append(comment)
        item["comments"] += 1
        return comment

    def _new_review_comment(
        self, repo: Repo, pull: dict[str, Any], review: dict[str, Any], given: Mapping[str, Any]
    ) -> None:
        comment_id = next(self._ids)
        url = f"{self._api(repo)}/pulls/comments/{comment_id}"
        html = f"{pull['html_url']}#discussion_r{comment_id}"
        line, start = int(given["line"]), given.get("start_line")
        side = given.get("side", "RIGHT")
        comment = {
            "url": url,
            "pull_request_review_id": review["id"],
            "id": comment_id,
            "node_id": f"PRRC_{comment_id}",
            "diff_hunk": given.get("diff_hunk", f"@@ -{line},1 +{line},1 @@"),
            "path": given["path"],
            "commit_id": review["commit_id"],
            "original_commit_id": review["commit_id"],
            "user": review["user"],
            "body": given["body"],
            "created_at": review["submitted_at"],
            "updated_at": review["submitted_at"],
            "html_url": html,
            "pull_request_url": pull["url"],
            "author_association": review["author_association"],
            "_links": {"self": {"href": url}, "html": {"href": html}, "pull_request": {"href": pull["url"]}},
            "start_line": start,
            "original_start_line": start,
            "start_side": side if start is not None else None,
            "line": line,
            "original_line": line,
            "side": side,
            "subject_type": "line",
        }
        repo.review_comments.setdefault(pull["number"], []).append(comment)
        pull["review_comments"] += 1

    def _app(self, slug: str) -> dict[str, Any]:
        return {
            "id": abs(hash(slug)) % 10**6,
            "slug": slug,
            "node_id": f"A_{slug}",
            "name": slug,
            "html_url": f"{self.url}/apps/{slug}",
        }

    def _suite(self, repo: Repo, app: str, head_sha: str, head_branch: str | None) -> dict[str, Any]:
        """The check suite of ``app`` for ``head_sha``: GitHub makes one per app and commit."""
        for suite in repo.check_suites:
            if suite["head_sha"] == head_sha and suite["app"]["slug"] == app:
                return suite
        suite_id = next(self._ids)
        api = self._api(repo)
        minimal_repo = {"id": repo.id, "url": api, "name": repo.name}
        pulls = [
            {
                "url": p["url"],
                "id": p["id"],
                "number": p["number"],
                "head": {"ref": p["head"]["ref"], "sha": head_sha, "repo": minimal_repo},
                "base": {"ref": p["base"]["ref"], "sha": p["base"]["sha"], "repo": minimal_repo},
            }
            for p in repo.pulls
            if head_branch is not None and p["state"] == "open" and p["head"]["ref"] == head_branch
        ]
        stamp = now()
        suite = {
            "id": suite_id,
            "node_id": f"CS_{suite_id}",
            "head_branch": head_branch,
            "head_sha": head_sha,
            "status": "queued",
            "conclusion": None,
            "url": f"{api}/check-suites/{suite_id}",
            "check_runs_url": f"{api}/check-suites/{suite_id}/check-runs",
            "pull_requests": pulls,
            "app": self._app(app),
            "created_at": stamp,
            "updated_at": stamp,
            "latest_check_runs_count": 0,
        }
        repo.check_suites.append(suite)
        return suite

    def _new_check_run(
        self,
        repo: Repo,
        suite: dict[str, Any],
        name: str,
        status: str,
        conclusion: str | None,
        output: Mapping[str, Any],
    ) -> dict[str, Any]:
        run_id = next(self._ids)
        api, html = self._api(repo), self._html(repo)
        stamp = now()
        run = {
            "id": run_id,
            "node_id": f"CR_{run_id}",
            "head_sha": suite["head_sha"],
            "external_id": "",
            "url": f"{api}/check-runs/{run_id}",
            "html_url": f"{html}/runs/{run_id}",
            "details_url": f"{html}/runs/{run_id}",
            "status": status,
            "conclusion": conclusion,
            "started_at": stamp,
            "completed_at": stamp if status == "completed" else None,
            "output": {
                "title": output.get("title"),
                "summary": output.get("summary"),
                "text": output.get("text"),
                "annotations_count": 0,
                "annotations_url": f"{api}/check-runs/{run_id}/annotations",
            },
            "name": name,
            "check_suite": {"id": suite["id"]},
            "app": suite["app"],
            "pull_requests": suite["pull_requests"],
        }
        repo.check_runs.append(run)
        runs = [r for r in repo.check_runs if r["check_suite"]["id"] == suite["id"]]
        done = all(r["status"] == "completed" for r in runs)
        suite.update(
            status="completed" if done else "in_progress",
            conclusion=min((r["conclusion"] for r in runs), key=CONCLUSIONS.index) if done else None,
            latest_check_runs_count=len(runs),
            updated_at=stamp,
        )
        return run

    def _repo_json(self, repo: Repo) -> dict[str, Any]:
        api = f"{self.url}/repos/{repo.owner}/{repo.name}"
        stamp = now()
        return {
            "id": repo.id,
            "node_id": f"R_{repo.id}",
            "name": repo.name,
            "full_name": f"{repo.owner}/{repo.name}",
            "private": True,
            "visibility": "private",
            "owner": self._user(repo.owner),
            "html_url": self._html(repo),
            "description": None,
            "fork": False,
            "url": api,
            "pulls_url": f"{api}/pulls{{/number}}",
            "issues_url": f"{api}/issues{{/number}}",
            "labels_url": f"{api}/labels{{/name}}",
            "git_url": f"git://127.0.0.1/{repo.owner}/{repo.name}.git",
            "ssh_url": f"git@127.0.0.1:{repo.owner}/{repo.name}.git",
            "clone_url": f"{self._html(repo)}.git",
            "default_branch": repo.default_branch,
            "archived": False,
            "disabled": False,
            "has_issues": True,
            "open_issues_count": sum(p["state"] == "open" for p in repo.pulls),
            "created_at": stamp,
            "updated_at": stamp,
            "pushed_at": stamp,
            "permissions": {"admin": False, "maintain": False, "push": True, "triage": True, "pull": True},
            "allow_merge_commit": True,
            "allow_squash_merge": True,
            "allow_rebase_merge": True,
            "delete_branch_on_merge": False,
        }

    def _ref_json(self, repo: Repo, owner: str, ref: str) -> dict[str, Any]:
        return {
            "label": f"{owner}:{ref}",
            "ref": ref,
            "sha": "0" * 40,
            "user": self._user(owner),
            "repo": self._repo_json(repo),
        }

    def _pull(self, repo: Repo, number: str) -> dict[str, Any] | None:
        return next((p for p in repo.pulls if str(p["number"]) == number), None)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "GitHub.com"
    stub: GitHubStub

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body: JSON = json.loads(raw) if raw else None
        except ValueError:
            (status, payload), fault = error_reply(400, "Problems parsing JSON"), None
        else:
            (status, payload), fault = self.server.owner._handle(
                self.command, self.path, dict(self.headers.items()), body
            )
        if fault is not None and fault.delay:
            self.server.owner.stopping.wait(fault.delay)
        data = json.dumps(payload).encode()
        self.send_response(status, HTTPStatus(status).phrase)
        headers = {
            "Content-Type": "application/json; charset=utf-8",
            "Content-Length": str(len(data)),
            "X-GitHub-Media-Type": "github.v3; format=json",
            "X-RateLimit-Limit": "5000",
            "X-RateLimit-Remaining": "4999",
            "X-RateLimit-Reset": "4102444800",
            "X-RateLimit-Used": "1",
            "X-RateLimit-Resource": "core",
            **(fault.headers if fault is not None else {}),
        }
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _serve

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: tests read ``stub.requests`` instead of stderr."""


GitHubStub.handler = _Handler
