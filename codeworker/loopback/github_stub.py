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
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlsplit

from codeworker.loopback.github_records import (
    JSON,
    Fault,
    RecordedRequest,
    Reply,
    Repo,
    ValidationFailed,
    error_reply,
    now,
)
from codeworker.loopback.github_routes import ROUTES
from codeworker.loopback.server import LoopbackServer


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
        self._repos: dict[tuple[str, str], Repo] = {}
        self._faults: list[Fault] = []
        self._lock = threading.Lock()
        self._ids = itertools.count(1000)
        self.stopping = threading.Event()
        """Set when the stand-in stops: an answer held back (``delay_next``) goes out then."""

    def stop(self) -> None:
        self.stopping.set()
        super().stop()

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

    def check_runs(self, owner: str, repo: str) -> list[dict[str, Any]]:
        """The check runs created on one repository, oldest first."""
        with self._lock:
            return json.loads(json.dumps(self._repo(owner, repo).check_runs))

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
