"""Webhook deliveries as GitHub sends them, about the GitHub stand-in's state, to a worker under test.

A test makes something happen on the stand-in (a comment, a review, a failing check, a label), has
:class:`Webhooks` build the payload GitHub would send about it, and delivers it to the worker's
webhook URL: a JSON body signed with the hook's secret (``X-Hub-Signature-256``, HMAC-SHA256 of the
exact bytes), with GitHub's ``X-GitHub-Event``, ``X-GitHub-Delivery``, ``X-GitHub-Hook-*`` and
``User-Agent: GitHub-Hookshot/...`` headers. ``redeliver`` sends a delivery again unchanged, delivery
id included, as GitHub's "Redeliver" button and its own retries do.

The payloads follow GitHub's published example payloads, ``@octokit/webhooks-examples`` 7.6.1
(``api.github.com/index.json``), and the ``x-webhooks`` schemas of ``@octokit/openapi`` 23.0.2,
trimmed to the fields a client reads but with GitHub's names and nesting. Where the two differ from
the REST API, so do these: a review's ``state`` is lower case here, and a check run's
``check_suite`` is the whole suite.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import requests

from codeworker.loopback.github_records import JSON, Repo

if TYPE_CHECKING:
    from codeworker.loopback.github_stub import GitHubStub

HOOK_ID = 109948940
"""The id of the repository webhook every delivery comes from (``X-GitHub-Hook-ID``)."""

USER_AGENT = "GitHub-Hookshot/5d2a1c7"


@dataclass(frozen=True)
class Delivery:
    """One delivery as it was sent and answered (what GitHub's "Recent Deliveries" shows)."""

    id: str
    """``X-GitHub-Delivery``: GitHub's GUID for the delivery, the same when it is redelivered."""
    event: str
    url: str
    headers: dict[str, str]
    body: bytes
    """The exact bytes sent, which the signature covers."""
    status: int
    answer: JSON
    """The receiver's answer, parsed when it is JSON, else its text."""


class Webhooks:
    """Builds GitHub's webhook payloads from one stand-in's state and delivers them, signed.

    Each builder takes the repository and the id or number of something already on the stand-in,
    and returns a fresh payload (a dict a test may change before delivering it). ``sender`` is the
    login of whoever acted; by default the author of the comment, review or issue, and for checks
    the stand-in's own user, who pushed the branch the checks ran on.
    """

    def __init__(self, stub: GitHubStub) -> None:
        self._stub = stub
        self._lock = threading.Lock()
        self.sent: list[Delivery] = []
        """Every delivery, oldest first."""

    # -- delivering ------------------------------------------------------------------------------

    def deliver(
        self,
        url: str,
        secret: str | None,
        event: str,
        payload: dict[str, Any],
        *,
        delivery_id: str | None = None,
        timeout: float = 10.0,
    ) -> tuple[int, JSON]:
        """POST ``payload`` to ``url`` as the ``event`` webhook, signed with ``secret`` (None: no
        signature, as GitHub sends for a hook without a secret); a fresh delivery id unless one is
        given. Returns the answer's status and body."""
        body = json.dumps(payload).encode()
        headers = {
            "User-Agent": USER_AGENT,
            "Content-Type": "application/json",
            "X-GitHub-Event": event,
            "X-GitHub-Delivery": delivery_id or str(uuid.uuid4()),
            "X-GitHub-Hook-ID": str(HOOK_ID),
            "X-GitHub-Hook-Installation-Target-Type": "repository",
            "X-GitHub-Hook-Installation-Target-ID": str((payload.get("repository") or {}).get("id", "")),
        }
        if secret is not None:
            digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
            headers["X-Hub-Signature-256"] = f"sha256={digest}"
        return self._send(url, event, headers, body, timeout)

    def redeliver(self, delivery: Delivery, *, timeout: float = 10.0) -> tuple[int, JSON]:
        """Send ``delivery`` again, byte for byte and with its delivery id."""
        return self._send(delivery.url, delivery.event, delivery.headers, delivery.body, timeout)

    def _send(
        self, url: str, event: str, headers: dict[str, str], body: bytes, timeout: float
    ) -> tuple[int, JSON]:
        with requests.Session() as session:
            # Loopback only: a proxy from the environment must not see (or refuse) the delivery.
            session.trust_env = False
            response = session.post(url, data=body, headers=headers, timeout=timeout)
        try:
            answer: JSON = response.json()
        except ValueError:
            answer = response.text
        delivery = Delivery(
            headers["X-GitHub-Delivery"], event, url, headers, body, response.status_code, answer
        )
        with self._lock:
            self.sent.append(delivery)
        return response.status_code, answer

    # -- payloads --------------------------------------------------------------------------------

    def ping(self, owner: str, name: str, *, sender: str | None = None) -> dict[str, Any]:
        """What GitHub sends when a webhook is created."""
        with self._stub._lock:
            repo = self._stub._repo(owner, name)
            hook = {
                "type": "Repository",
                "id": HOOK_ID,
                "name": "web",
                "active": True,
                "events": ["*"],
                "config": {"content_type": "json", "insecure_ssl": "0"},
            }
            payload = {"zen": "Anything added dilutes everything else.", "hook_id": HOOK_ID, "hook": hook}
            return self._envelope(repo, payload, sender or owner, None)

    def issue_comment(
        self,
        owner: str,
        name: str,
        comment_id: int,
        *,
        action: str = "created",
        sender: str | None = None,
        installation_id: int | None = None,
    ) -> dict[str, Any]:
        """A comment on an issue or a pull request's conversation; on a pull request, ``issue``
        has ``pull_request``."""
        with self._stub._lock:
            repo = self._stub._repo(owner, name)
            comment = self._found(repo.comment(comment_id), "issue comment", comment_id)
            number = int(comment["issue_url"].rsplit("/", 1)[1])
            issue = self._stub._issue_json(self._stub._item(repo, number))
            payload = {"action": action, "issue": issue, "comment": comment}
            return self._envelope(repo, payload, sender or comment["user"]["login"], installation_id)

    def pull_request_review(
        self,
        owner: str,
        name: str,
        review_id: int,
        *,
        action: str = "submitted",
        sender: str | None = None,
        installation_id: int | None = None,
    ) -> dict[str, Any]:
        """A review (``add_review``'s); its inline comments come as events of their own."""
        with self._stub._lock:
            repo = self._stub._repo(owner, name)
            every = (r for reviews in repo.reviews.values() for r in reviews)
            review = self._found(next((r for r in every if r["id"] == review_id), None), "review", review_id)
            # The webhook spells the state in lower case; the REST API in upper case.
            payload = {
                "action": action,
                "review": {**review, "state": review["state"].lower()},
                "pull_request": self._pull_of(repo, review),
            }
            return self._envelope(repo, payload, sender or review["user"]["login"], installation_id)

    def pull_request_review_comment(
        self,
        owner: str,
        name: str,
        comment_id: int,
        *,
        action: str = "created",
        sender: str | None = None,
        installation_id: int | None = None,
    ) -> dict[str, Any]:
        """An inline comment on a line of a pull request's diff (one of ``add_review``'s)."""
        with self._stub._lock:
            repo = self._stub._repo(owner, name)
            every = (c for comments in repo.review_comments.values() for c in comments)
            comment = self._found(
                next((c for c in every if c["id"] == comment_id), None), "review comment", comment_id
            )
            payload = {"action": action, "comment": comment, "pull_request": self._pull_of(repo, comment)}
            return self._envelope(repo, payload, sender or comment["user"]["login"], installation_id)

    def check_suite(
        self,
        owner: str,
        name: str,
        suite_id: int,
        *,
        action: str = "completed",
        sender: str | None = None,
        installation_id: int | None = None,
    ) -> dict[str, Any]:
        """A check suite (``add_check_run``'s run has its id as ``check_suite.id``)."""
        with self._stub._lock:
            repo = self._stub._repo(owner, name)
            payload = {"action": action, "check_suite": self._suite(repo, suite_id)}
            return self._envelope(repo, payload, sender or self._stub.login, installation_id)

    def check_run(
        self,
        owner: str,
        name: str,
        run_id: int,
        *,
        action: str = "completed",
        sender: str | None = None,
        installation_id: int | None = None,
    ) -> dict[str, Any]:
        """A check run, its ``check_suite`` the whole suite (the REST API gives only its id)."""
        with self._stub._lock:
            repo = self._stub._repo(owner, name)
            run = self._found(
                next((r for r in repo.check_runs if r["id"] == run_id), None), "check run", run_id
            )
            suite = self._suite(repo, run["check_suite"]["id"])
            payload = {"action": action, "check_run": {**run, "check_suite": suite}}
            return self._envelope(repo, payload, sender or self._stub.login, installation_id)

    def issues(
        self,
        owner: str,
        name: str,
        number: int,
        *,
        action: str = "labeled",
        label: str | None = None,
        sender: str | None = None,
        installation_id: int | None = None,
    ) -> dict[str, Any]:
        """An ``issues`` event; ``labeled`` (and ``unlabeled``) carry the ``label`` concerned,
        which for ``labeled`` must be on the issue already, as it is when GitHub sends it."""
        with self._stub._lock:
            repo = self._stub._repo(owner, name)
            issue = self._stub._issue_json(self._stub._item(repo, number))
            payload: dict[str, Any] = {"action": action, "issue": issue}
            if label is not None:
                found = next((la for la in issue["labels"] if la["name"] == label), None)
                if found is None and action == "labeled":
                    raise ValueError(f"#{number} of {owner}/{name} has no label {label!r}")
                payload["label"] = found or {"name": label}
            return self._envelope(repo, payload, sender or issue["user"]["login"], installation_id)

    # -- private -----------------------------------------------------------------------------------

    def _envelope(
        self, repo: Repo, payload: dict[str, Any], sender: str, installation_id: int | None
    ) -> dict[str, Any]:
        """``payload`` with what every event carries, as a fresh copy of the stand-in's state."""
        payload = {**payload, "repository": self._stub._repo_json(repo), "sender": self._stub._user(sender)}
        if installation_id is not None:
            payload["installation"] = {
                "id": installation_id,
                "node_id": f"MDIzOkludGVncmF0aW9u{installation_id}",
            }
        return json.loads(json.dumps(payload))

    def _pull_of(self, repo: Repo, review_or_comment: dict[str, Any]) -> dict[str, Any]:
        number = review_or_comment["pull_request_url"].rsplit("/", 1)[1]
        return self._found(self._stub._pull(repo, number), "pull request", number)

    def _suite(self, repo: Repo, suite_id: int) -> dict[str, Any]:
        return self._found(
            next((s for s in repo.check_suites if s["id"] == suite_id), None), "check suite", suite_id
        )

    @staticmethod
    def _found(value: dict[str, Any] | None, what: str, key: object) -> dict[str, Any]:
        if value is None:
            raise KeyError(f"the GitHub stand-in has no {what} {key}")
        return value
