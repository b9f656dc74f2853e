"""A GitHub REST stand-in: a real HTTP server on loopback that PyGithub talks to through ``base_url``.

It keeps just enough state (repositories, pull requests, labels) for the calls codeworker makes,
answers in GitHub's JSON shapes (including its error bodies), records every request, and can be
told to fail the next matching request with a 5xx, optionally *after* doing the work, which is
how a client retry of ``POST /pulls`` meets ``422 A pull request already exists``.
"""

from __future__ import annotations

import itertools
import json
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlsplit

from codeworker.loopback.server import LoopbackServer

DOCS_URL = "https://docs.github.com/rest"

JSON = Any
Reply = tuple[int, JSON]
Route = Callable[["GitHubStub", re.Match[str], dict[str, str], JSON], Reply]


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
class _Fault:
    method: str
    pattern: re.Pattern[str]
    status: int
    after_processing: bool
    remaining: int


@dataclass
class _Repo:
    owner: str
    name: str
    id: int
    default_branch: str = "main"
    pulls: list[dict[str, Any]] = field(default_factory=list)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _error(status: int, message: str, **extra: Any) -> Reply:
    return status, {"message": message, **extra, "documentation_url": DOCS_URL, "status": str(status)}


class _ValidationFailed(Exception):
    """Raised inside a route to answer GitHub's ``422 Validation Failed`` shape."""

    def __init__(self, code: str, message: str | None = None, field_name: str | None = None) -> None:
        super().__init__(message or code)
        error: dict[str, str] = {"resource": "PullRequest", "code": code}
        if field_name is not None:
            error["field"] = field_name
        if message is not None:
            error["message"] = message
        self.error = error


class GitHubStub(LoopbackServer):
    """GitHub's REST API for one token, on ``127.0.0.1`` and a free port.

    Every repository exists on first use (default branch ``main``); ``add_repo`` sets another one.
    State is guarded by one lock, so concurrent clients see GitHub's one-open-PR-per-head rule.
    """

    login = "codeworker-bot"

    def __init__(self, token: str) -> None:
        super().__init__()
        self.token = token
        self.requests: list[RecordedRequest] = []
        self._repos: dict[tuple[str, str], _Repo] = {}
        self._faults: list[_Fault] = []
        self._lock = threading.Lock()
        self._ids = itertools.count(1000)

    @property
    def url(self) -> str:
        """Base API URL, what PyGithub takes as ``base_url``."""
        return f"http://127.0.0.1:{self.port}"

    # -- test helpers ------------------------------------------------------------------------

    def add_repo(self, owner: str, name: str, default_branch: str = "main") -> None:
        with self._lock:
            self._repo(owner, name).default_branch = default_branch

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
                _Fault(method.upper(), re.compile(path_regex), status, after_processing, times)
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

    def _handle(self, method: str, raw_path: str, headers: dict[str, str], body: JSON) -> Reply:
        split = urlsplit(raw_path)
        query = {k: v[-1] for k, v in parse_qs(split.query).items()}
        with self._lock:
            self.requests.append(RecordedRequest(method, raw_path, headers, body))
            fault = self._take_fault(method, split.path)
            if fault is not None and not fault.after_processing:
                return _error(fault.status, "Server Error")
            if not self._authorized(headers):
                return _error(401, "Bad credentials")
            reply = self._route(method, split.path, query, body)
            if fault is not None:
                return _error(fault.status, "Server Error")
            return reply

    def _take_fault(self, method: str, path: str) -> _Fault | None:
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
        for route_method, pattern, route in _ROUTES:
            if route_method == method and (match := pattern.fullmatch(path)):
                try:
                    return route(self, match, query, body)
                except _ValidationFailed as exc:
                    return _error(422, "Validation Failed", errors=[exc.error])
        return _error(404, "Not Found")

    # -- state and JSON shapes ----------------------------------------------------------------

    def _repo(self, owner: str, name: str) -> _Repo:
        key = (owner, name)
        if key not in self._repos:
            self._repos[key] = _Repo(owner, name, next(self._ids))
        return self._repos[key]

    def _user(self, login: str) -> dict[str, Any]:
        return {
            "login": login,
            "id": abs(hash(login)) % 10**8,
            "node_id": f"U_{login}",
            "type": "User",
            "site_admin": False,
            "url": f"{self.url}/users/{login}",
            "html_url": f"{self.url}/{login}",
        }

    def _repo_json(self, repo: _Repo) -> dict[str, Any]:
        api = f"{self.url}/repos/{repo.owner}/{repo.name}"
        stamp = _now()
        return {
            "id": repo.id,
            "node_id": f"R_{repo.id}",
            "name": repo.name,
            "full_name": f"{repo.owner}/{repo.name}",
            "private": True,
            "visibility": "private",
            "owner": self._user(repo.owner),
            "html_url": f"{self.url}/{repo.owner}/{repo.name}",
            "description": None,
            "fork": False,
            "url": api,
            "pulls_url": f"{api}/pulls{{/number}}",
            "issues_url": f"{api}/issues{{/number}}",
            "labels_url": f"{api}/labels{{/name}}",
            "git_url": f"git://127.0.0.1/{repo.owner}/{repo.name}.git",
            "ssh_url": f"git@127.0.0.1:{repo.owner}/{repo.name}.git",
            "clone_url": f"{self.url}/{repo.owner}/{repo.name}.git",
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

    def _ref_json(self, repo: _Repo, owner: str, ref: str) -> dict[str, Any]:
        return {
            "label": f"{owner}:{ref}",
            "ref": ref,
            "sha": "0" * 40,
            "user": self._user(owner),
            "repo": self._repo_json(repo),
        }

    def _pull(self, repo: _Repo, number: str) -> dict[str, Any] | None:
        return next((p for p in repo.pulls if str(p["number"]) == number), None)


def _label(name: str) -> dict[str, Any]:
    return {
        "id": abs(hash(name)) % 10**8,
        "node_id": f"LA_{name}",
        "name": name,
        "color": "ededed",
        "default": False,
        "description": None,
    }


# -- routes -------------------------------------------------------------------------------------

_REPO = r"/repos/(?P<owner>[^/]+)/(?P<name>[^/]+)"


def _get_repo(stub: GitHubStub, m: re.Match[str], query: dict[str, str], body: JSON) -> Reply:
    return 200, stub._repo_json(stub._repo(m["owner"], m["name"]))


def _create_pull(stub: GitHubStub, m: re.Match[str], query: dict[str, str], body: JSON) -> Reply:
    repo = stub._repo(m["owner"], m["name"])
    if not isinstance(body, dict):
        return _error(400, "Problems parsing JSON")
    for name in ("head", "base", "title"):
        if not body.get(name):
            raise _ValidationFailed("missing_field", field_name=name)
    head: str = body["head"]
    head_owner, _, head_ref = head.rpartition(":")
    head_owner = head_owner or repo.owner
    label = f"{head_owner}:{head_ref}"
    if head_ref == body["base"] and head_owner == repo.owner:
        raise _ValidationFailed("custom", f"No commits between {body['base']} and {head_ref}")
    if any(p["state"] == "open" and p["head"]["label"] == label for p in repo.pulls):
        raise _ValidationFailed("custom", f"A pull request already exists for {label}.")
    number = len(repo.pulls) + 1
    api = f"{stub.url}/repos/{repo.owner}/{repo.name}"
    stamp = _now()
    pull: dict[str, Any] = {
        "id": next(stub._ids),
        "node_id": f"PR_{repo.id}_{number}",
        "number": number,
        "url": f"{api}/pulls/{number}",
        "html_url": f"{stub.url}/{repo.owner}/{repo.name}/pull/{number}",
        "diff_url": f"{stub.url}/{repo.owner}/{repo.name}/pull/{number}.diff",
        "patch_url": f"{stub.url}/{repo.owner}/{repo.name}/pull/{number}.patch",
        "issue_url": f"{api}/issues/{number}",
        "commits_url": f"{api}/pulls/{number}/commits",
        "review_comments_url": f"{api}/pulls/{number}/comments",
        "comments_url": f"{api}/issues/{number}/comments",
        "statuses_url": f"{api}/statuses/{'0' * 40}",
        "state": "open",
        "locked": False,
        "title": body["title"],
        "body": body.get("body"),
        "user": stub._user(stub.login),
        "labels": [],
        "assignees": [],
        "requested_reviewers": [],
        "requested_teams": [],
        "milestone": None,
        "created_at": stamp,
        "updated_at": stamp,
        "closed_at": None,
        "merged_at": None,
        "merge_commit_sha": None,
        "draft": bool(body.get("draft", False)),
        "head": stub._ref_json(repo, head_owner, head_ref),
        "base": stub._ref_json(repo, repo.owner, body["base"]),
        "author_association": "CONTRIBUTOR",
        "auto_merge": None,
        "merged": False,
        "mergeable": None,
        "mergeable_state": "unknown",
        "maintainer_can_modify": bool(body.get("maintainer_can_modify", False)),
        "comments": 0,
        "review_comments": 0,
        "commits": 1,
        "additions": 0,
        "deletions": 0,
        "changed_files": 0,
    }
    repo.pulls.append(pull)
    return 201, pull


def _list_pulls(stub: GitHubStub, m: re.Match[str], query: dict[str, str], body: JSON) -> Reply:
    repo = stub._repo(m["owner"], m["name"])
    state = query.get("state", "open")
    if state not in {"open", "closed", "all"}:
        raise _ValidationFailed("invalid", f"state must be open, closed or all, not {state!r}", "state")
    pulls = [p for p in repo.pulls if state == "all" or p["state"] == state]
    if ":" in query.get("head", ""):
        # GitHub filters on the label ``user:ref`` and silently ignores a bare branch name.
        pulls = [p for p in pulls if p["head"]["label"] == query["head"]]
    if "base" in query:
        pulls = [p for p in pulls if p["base"]["ref"] == query["base"]]
    newest_first = query.get("direction", "desc") == "desc"
    return 200, sorted(pulls, key=lambda p: p["number"], reverse=newest_first)


def _get_pull(stub: GitHubStub, m: re.Match[str], query: dict[str, str], body: JSON) -> Reply:
    pull = stub._pull(stub._repo(m["owner"], m["name"]), m["number"])
    return (200, pull) if pull is not None else _error(404, "Not Found")


def _patch_pull(stub: GitHubStub, m: re.Match[str], query: dict[str, str], body: JSON) -> Reply:
    pull = stub._pull(stub._repo(m["owner"], m["name"]), m["number"])
    if pull is None:
        return _error(404, "Not Found")
    if not isinstance(body, dict):
        return _error(400, "Problems parsing JSON")
    if "state" in body and body["state"] not in {"open", "closed"}:
        raise _ValidationFailed("invalid", field_name="state")
    for name in ("title", "body", "state", "maintainer_can_modify"):
        if name in body:
            pull[name] = body[name]
    if "base" in body:
        pull["base"]["ref"] = body["base"]
        pull["base"]["label"] = f"{m['owner']}:{body['base']}"
    pull["closed_at"] = _now() if pull["state"] == "closed" else None
    pull["updated_at"] = _now()
    return 200, pull


def _issue_json(pull: dict[str, Any]) -> dict[str, Any]:
    keys = ("id", "node_id", "number", "title", "body", "user", "labels", "state", "locked", "assignees")
    issue = {k: pull[k] for k in keys}
    issue.update(
        url=pull["issue_url"],
        html_url=pull["html_url"],
        comments_url=pull["comments_url"],
        comments=0,
        created_at=pull["created_at"],
        updated_at=pull["updated_at"],
        closed_at=pull["closed_at"],
        draft=pull["draft"],
        pull_request={"url": pull["url"], "html_url": pull["html_url"], "diff_url": pull["diff_url"]},
    )
    return issue


def _get_issue(stub: GitHubStub, m: re.Match[str], query: dict[str, str], body: JSON) -> Reply:
    pull = stub._pull(stub._repo(m["owner"], m["name"]), m["number"])
    return (200, _issue_json(pull)) if pull is not None else _error(404, "Not Found")


def _add_labels(stub: GitHubStub, m: re.Match[str], query: dict[str, str], body: JSON) -> Reply:
    pull = stub._pull(stub._repo(m["owner"], m["name"]), m["number"])
    if pull is None:
        return _error(404, "Not Found")
    names = body.get("labels") if isinstance(body, dict) else body
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise _ValidationFailed("invalid", "labels must be a list of strings", "labels")
    present = {label["name"] for label in pull["labels"]}
    pull["labels"].extend(_label(n) for n in dict.fromkeys(names) if n not in present)
    return 200, pull["labels"]


def _list_labels(stub: GitHubStub, m: re.Match[str], query: dict[str, str], body: JSON) -> Reply:
    pull = stub._pull(stub._repo(m["owner"], m["name"]), m["number"])
    return (200, pull["labels"]) if pull is not None else _error(404, "Not Found")


_ROUTES: list[tuple[str, re.Pattern[str], Route]] = [
    ("GET", re.compile(_REPO), _get_repo),
    ("POST", re.compile(_REPO + r"/pulls"), _create_pull),
    ("GET", re.compile(_REPO + r"/pulls"), _list_pulls),
    ("GET", re.compile(_REPO + r"/pulls/(?P<number>\d+)"), _get_pull),
    ("PATCH", re.compile(_REPO + r"/pulls/(?P<number>\d+)"), _patch_pull),
    ("GET", re.compile(_REPO + r"/issues/(?P<number>\d+)"), _get_issue),
    ("GET", re.compile(_REPO + r"/issues/(?P<number>\d+)/labels"), _list_labels),
    ("POST", re.compile(_REPO + r"/issues/(?P<number>\d+)/labels"), _add_labels),
]


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
            status, payload = _error(400, "Problems parsing JSON")
        else:
            status, payload = self.server.owner._handle(
                self.command, self.path, dict(self.headers.items()), body
            )
        data = json.dumps(payload).encode()
        self.send_response(status, HTTPStatus(status).phrase)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("X-GitHub-Media-Type", "github.v3; format=json")
        self.send_header("X-RateLimit-Limit", "5000")
        self.send_header("X-RateLimit-Remaining", "4999")
        self.send_header("X-RateLimit-Reset", "4102444800")
        self.send_header("X-RateLimit-Used", "1")
        self.send_header("X-RateLimit-Resource", "core")
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _serve

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: tests read ``stub.requests`` instead of stderr."""


GitHubStub.handler = _Handler
