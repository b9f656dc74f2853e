"""What GitHub events start: follow-ups on codeworker's pull requests, and operations from issues.

The worker's webhook endpoint (:mod:`codeworker.worker.http`) verifies the signature and handles
each delivery id once, then hands the event here. :class:`Triggers` decides, sends the job to the
queue by task name (the same message any backend could send) and answers the delivery:

- ``issue_comment`` on a codeworker pull request, ``pull_request_review`` and
  ``pull_request_review_comment``, mentioning ``@<handle>`` (CODEWORKER_MENTION): a follow-up whose
  instructions are the comment, or the review with all its inline comments (path and line). A
  review's events (the review, each inline comment) all name the same Celery task id, so the
  revision runs once whichever arrives first (:meth:`Pipeline.follow_up`).
- ``check_suite`` / ``check_run`` completed with a failure on the head commit codeworker last pushed:
  a follow-up whose instructions are the failing checks' names and output summaries, read through
  the API; once per commit, at most CODEWORKER_MAX_CI_FOLLOW_UPS per pull request.
- ``issues`` labelled ``codeworker`` (or ``codeworker:<operation_type>``), or an issue comment
  mentioning the handle on an issue: a new operation whose description is the issue, and whose pull
  request says ``Fixes #N``.

Only people with write, maintain or admin permission trigger anything (asked through the API,
cached a minute); others get one polite answer per issue or pull request (or none, with
CODEWORKER_REPLY_TO_UNAUTHORIZED=false). Bot accounts, codeworker's own included
(CODEWORKER_GITHUB_LOGIN), never trigger a run, except that failing checks come from CI's app.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from codeworker.config import Settings
from codeworker.coordination.deliveries import Deliveries
from codeworker.coordination.keys import repo_id
from codeworker.coordination.registry import BranchRecord, BranchRegistry, BranchStatus
from codeworker.github import FAILING_CONCLUSIONS, GitHubError, PullRequests
from codeworker.models import OperationType
from codeworker.pipeline.revision import PROGRESS_MARKER, TASK_NAME, ProgressComment
from codeworker.worker import metrics

log = logging.getLogger(__name__)

WRITERS = frozenset({"admin", "maintain", "write"})
"""Repository roles that may ask codeworker for work."""

OPEN = (BranchStatus.PR_OPEN, BranchStatus.REVISING)

LABEL = "codeworker"
"""The issue label that asks for an operation (``codeworker:<operation_type>`` names its type)."""

Send = Callable[[str, dict[str, Any], str], None]
"""``(task name, job, task id)``: puts one job on the queue."""


@dataclass(frozen=True)
class Answer:
    """What the webhook answers GitHub (shown in the hook's Recent Deliveries)."""

    body: dict[str, Any]
    status: int = 202


def ignored(why: str) -> Answer:
    return Answer({"ignored": why})


def is_bot(user: dict[str, Any], own_login: str) -> bool:
    """A GitHub App, a bot account, or codeworker's own account."""
    login = str(user.get("login") or "")
    return (
        user.get("type") == "Bot"
        or login.endswith("[bot]")
        or (bool(own_login) and login.lower() == own_login.lower())
    )


class Triggers:
    """Turns verified webhook deliveries into jobs on the queue."""

    def __init__(
        self,
        settings: Settings,
        registry: BranchRegistry,
        pulls: PullRequests,
        deliveries: Deliveries,
        send: Send,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.pulls = pulls
        self.deliveries = deliveries
        self.send = send
        handle = re.escape(settings.mention)
        self.mention = re.compile(rf"(?<![A-Za-z0-9_@/-])@{handle}(?![A-Za-z0-9_-])", re.IGNORECASE)

    def handle(self, event: str, payload: dict[str, Any], delivery: str) -> Answer:
        """Act on one event; what was done (or why nothing was) as the delivery's answer.
        ``delivery`` (its GUID) names an operation an issue starts: labelling again asks again."""
        action = payload.get("action")
        if event == "issue_comment" and action == "created":
            return self._issue_comment(payload, delivery)
        if event == "pull_request_review" and action == "submitted":
            return self._review(payload, payload.get("review") or {})
        if event == "pull_request_review_comment" and action == "created":
            return self._review(payload, payload.get("comment") or {})
        if event in ("check_suite", "check_run") and action == "completed":
            return self._checks(event, payload)
        if event == "issues" and action == "labeled":
            return self._labelled(payload, delivery)
        return ignored(f"{event} {action or ''}".strip())

    # -- conversations ---------------------------------------------------------------------------

    def _issue_comment(self, payload: dict[str, Any], delivery: str) -> Answer:
        comment, issue = payload.get("comment") or {}, payload.get("issue") or {}
        body = str(comment.get("body") or "")
        refused = self._refused(payload, body)
        if refused is not None:
            return refused
        owner, name = _owner_and_name(payload)
        number = int(issue["number"])
        on_pull = issue.get("pull_request") is not None
        # Someone else's pull request is none of codeworker's business: no question asked of GitHub.
        record = self.registry.of_pull_request(_repo(payload), number) if on_pull else None
        if on_pull and record is None:
            return ignored(f"#{number} is not a codeworker pull request")
        if not self._may_trigger(payload, owner, name, number):
            return ignored(f"{_login(payload)} has no write access")
        if record is None:
            return self._new_operation(payload, issue, self.settings.issue_operation_type, delivery)
        return self._follow_up(payload, record, body, "comment", f"comment-{comment.get('id')}")

    def _review(self, payload: dict[str, Any], item: dict[str, Any]) -> Answer:
        """A review or one of its inline comments: the whole review is the instructions, and the
        task id is the review's, so its events make one revision."""
        pull = payload.get("pull_request") or {}
        owner, name = _owner_and_name(payload)
        number = int(pull["number"])
        if is_bot(payload.get("sender") or {}, self.settings.github_login):
            return ignored(f"{_login(payload)} is a bot")
        record = self.registry.of_pull_request(_repo(payload), number)
        if record is None:
            return ignored(f"#{number} is not a codeworker pull request")
        review_id = item.get("pull_request_review_id") or item.get("id")
        try:
            said = [
                entry
                for entry in self.pulls.conversation(owner, name, number)
                if review_id in (entry.id, entry.review_id) and entry.kind != "comment"
            ]
        except GitHubError as exc:
            log.warning("could not read review %s of #%s: %s", review_id, number, exc)
            said = []
        parts = [
            f"On {entry.path} line {entry.line}: {entry.body}" if entry.path else entry.body
            for entry in said
            if entry.body.strip()
        ] or [str(item.get("body") or "")]
        text = "\n\n".join(parts)
        refused = self._refused(payload, text)
        if refused is not None:
            return refused
        if not self._may_trigger(payload, owner, name, number):
            return ignored(f"{_login(payload)} has no write access")
        return self._follow_up(payload, record, text, "review", f"review-{review_id}")

    def _refused(self, payload: dict[str, Any], text: str) -> Answer | None:
        """Why this says nothing to codeworker: a bot said it, or it does not mention the handle."""
        if is_bot(payload.get("sender") or {}, self.settings.github_login):
            return ignored(f"{_login(payload)} is a bot")
        if text.startswith(PROGRESS_MARKER) or not self.mention.search(text):
            return ignored(f"no @{self.settings.mention}")
        return None

    def _may_trigger(self, payload: dict[str, Any], owner: str, name: str, number: int) -> bool:
        """Whether the sender has write access; if not, one polite answer per person and thread."""
        login = _login(payload)
        try:
            role = self.pulls.permission(owner, name, login)
        except GitHubError as exc:
            log.warning("permission of %s on %s/%s unknown, not acting: %s", login, owner, name, exc)
            return False
        if role in WRITERS:
            return True
        once = f"unauthorized:{owner}/{name}#{number}:{login.lower()}"
        if self.settings.reply_to_unauthorized and self.deliveries.first(once):
            self._comment(
                owner,
                name,
                number,
                f"@{login}, thank you. Only people with write access to this repository can ask "
                f"@{self.settings.mention} for changes, so I have not acted on this.",
            )
        return False

    # -- failing checks --------------------------------------------------------------------------

    def _checks(self, event: str, payload: dict[str, Any]) -> Answer:
        item = payload.get(event) or {}
        suite = (item.get("check_suite") or item) if event == "check_run" else item
        if item.get("conclusion") not in FAILING_CONCLUSIONS:
            return ignored(f"{event} {item.get('conclusion')}")
        head_sha = str(item.get("head_sha") or suite.get("head_sha") or "")
        branch = suite.get("head_branch") or next(
            (p["head"]["ref"] for p in item.get("pull_requests") or [] if p.get("head")), None
        )
        if not branch:
            return ignored("no head branch")
        repo = _repo(payload)
        record = self.registry.get(repo, branch)
        if record is None or record.status not in OPEN or record.head != head_sha:
            return ignored(f"{head_sha[:12]} is not the head of an open codeworker pull request")
        # Every failing run and the suite itself send events: one follow-up per commit.
        if not self.deliveries.first(f"checks:{repo}:{head_sha}"):
            return Answer({"duplicate": f"checks of {head_sha[:12]} already handled"}, 200)
        owner, name = _owner_and_name(payload)
        if record.ci_follow_ups >= self.settings.max_ci_follow_ups:
            if record.ci_follow_ups == self.settings.max_ci_follow_ups:
                self.registry.count(repo, branch, "ci_follow_ups")
                self._comment(
                    owner,
                    name,
                    record.pr_number or 0,
                    f"Checks fail on `{head_sha[:12]}`. I have already made "
                    f"{self.settings.max_ci_follow_ups} automatic follow-up(s) for failing checks on "
                    "this pull request (CODEWORKER_MAX_CI_FOLLOW_UPS), so I stop here; mention "
                    f"@{self.settings.mention} to ask for another.",
                )
            return ignored("automatic follow-ups for failing checks are used up")
        try:
            failing = self.pulls.failing_checks(owner, name, head_sha)
        except GitHubError:
            self.deliveries.forget(f"checks:{repo}:{head_sha}")
            raise
        if not failing:
            self.deliveries.forget(f"checks:{repo}:{head_sha}")
            return ignored(f"no failing check on {head_sha[:12]}")
        self.registry.count(repo, branch, "ci_follow_ups")
        text = "Checks fail on the pull request's head commit. Make them pass.\n\n" + "\n\n".join(
            f"### {check.name}: {check.conclusion}\n{check.title}\n\n{check.summary}".strip()
            for check in failing
        )
        return self._follow_up(payload, record, text, "checks", f"checks-{head_sha}", who="checks")

    # -- issues ------------------------------------------------------------------------------------

    def _labelled(self, payload: dict[str, Any], delivery: str) -> Answer:
        label = str((payload.get("label") or {}).get("name") or "")
        if label != LABEL and not label.startswith(f"{LABEL}:"):
            return ignored(f"label {label}")
        if is_bot(payload.get("sender") or {}, self.settings.github_login):
            return ignored(f"{_login(payload)} is a bot")
        issue = payload.get("issue") or {}
        if issue.get("pull_request") is not None:
            return ignored("a pull request is not an issue to work on")
        kind = label.partition(":")[2] or self.settings.issue_operation_type.value
        if kind not in set(OperationType):
            return ignored(f"{kind} is no operation type ({', '.join(OperationType)})")
        owner, name = _owner_and_name(payload)
        if not self._may_trigger(payload, owner, name, int(issue["number"])):
            return ignored(f"{_login(payload)} has no write access")
        return self._new_operation(payload, issue, OperationType(kind), delivery)

    def _new_operation(
        self, payload: dict[str, Any], issue: dict[str, Any], kind: OperationType, delivery: str
    ) -> Answer:
        repository = payload.get("repository") or {}
        owner, name = _owner_and_name(payload)
        number = int(issue["number"])
        operation_id = _operation_id(f"gh-{name}-issue{number}-{delivery[:8]}", payload)
        job = {
            "operation_type": kind.value,
            "operation_id": operation_id,
            "description": f"{issue.get('title') or ''}\n\n{issue.get('body') or ''}".strip(),
            "repository": {
                "url": repository.get("clone_url") or repository.get("html_url"),
                "owner": owner,
                "name": name,
                "branch": repository.get("default_branch") or "main",
            },
            "issue_number": number,
            "session_id": f"issue {owner}/{name}#{number}",
        }
        self.send(kind.task_name, job, operation_id)
        metrics.github_trigger("issue")
        self._comment(
            owner,
            name,
            number,
            f"On it, @{_login(payload)}: operation `{operation_id}` ({kind.value}) is queued; its pull "
            f"request will say `Fixes #{number}`.",
        )
        log.info("issue #%s of %s/%s queued as %s", number, owner, name, operation_id)
        return Answer({"queued": operation_id, "task": kind.task_name}, 200)

    # -- sending ---------------------------------------------------------------------------------

    def _follow_up(
        self,
        payload: dict[str, Any],
        record: BranchRecord,
        instructions: str,
        trigger: str,
        source: str,
        who: str | None = None,
    ) -> Answer:
        if record.status not in OPEN:
            return ignored(f"the pull request's branch is {record.status.value}")
        task_id = _operation_id(f"follow-up-{source}", payload)
        request = {
            "operation_id": record.operation_id,
            "instructions": instructions,
            "requested_by": who or _login(payload),
            "trigger": trigger,
        }
        owner, name = _owner_and_name(payload)
        # Before the job is sent, so the revision finds the comment on the record and edits it.
        ProgressComment(self.pulls, self.registry, record, owner, name).show(
            f"queued, asked by @{request['requested_by']} ({trigger})"
        )
        self.send(TASK_NAME, request, task_id)
        metrics.github_trigger(trigger)
        log.info("follow-up of %s queued (%s)", record.operation_id, trigger)
        return Answer({"queued": task_id, "task": TASK_NAME, "operation_id": record.operation_id}, 200)

    def _comment(self, owner: str, name: str, number: int, body: str) -> None:
        try:
            self.pulls.comment(owner, name, number, body)
        except GitHubError as exc:
            log.warning("could not comment on %s/%s#%s: %s", owner, name, number, exc)


def _login(payload: dict[str, Any]) -> str:
    return str((payload.get("sender") or {}).get("login") or "unknown")


def _owner_and_name(payload: dict[str, Any]) -> tuple[str, str]:
    repository = payload.get("repository") or {}
    return str((repository.get("owner") or {}).get("login") or ""), str(repository.get("name") or "")


def _repo(payload: dict[str, Any]) -> str:
    repository = payload.get("repository") or {}
    return repo_id(str(repository.get("clone_url") or repository.get("html_url") or ""))


def _operation_id(stem: str, payload: dict[str, Any]) -> str:
    """A valid operation (or task) id from ``stem``, unique to the repository."""
    repository = payload.get("repository") or {}
    digest = hashlib.sha256(str(repository.get("id") or _repo(payload)).encode()).hexdigest()[:8]
    clean = re.sub(r"[^A-Za-z0-9._-]", "-", stem)[:110]
    return f"{clean}-{digest}"
