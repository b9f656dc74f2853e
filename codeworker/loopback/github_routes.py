"""The GitHub stand-in's routes: the REST calls codeworker makes, answered in GitHub's JSON shapes.

Each route takes the stand-in (called with its lock held), the path's match, the query and the
parsed body, and returns a status and a JSON body; ``ROUTES`` maps a method and a path to one. A
route raises ``ValidationFailed`` to answer ``422 Validation Failed``, as GitHub does when a pull
request for the head already exists. Paths, parameters and answers follow ``@octokit/openapi``
23.0.2; lists come in one page (no ``Link`` header), which a client reads as the whole list.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from codeworker.loopback.github_records import (
    CONCLUSIONS,
    JSON,
    ROLES,
    Reply,
    ValidationFailed,
    error_reply,
    label_json,
    now,
)

if TYPE_CHECKING:
    from codeworker.loopback.github_stub import GitHubStub

Route = Callable[["GitHubStub", re.Match[str], dict[str, str], JSON], Reply]


def _comment_body(body: JSON) -> str:
    """The ``body`` of a comment request, or the 422 GitHub answers without one."""
    if not isinstance(body, dict) or not isinstance(body.get("body"), str) or not body["body"]:
        raise ValidationFailed("missing_field", field_name="body", resource="IssueComment")
    return body["body"]


# -- routes -------------------------------------------------------------------------------------

_REPO = r"/repos/(?P<owner>[^/]+)/(?P<name>[^/]+)"


def _get_repo(stub: GitHubStub, m: re.Match[str], query: dict[str, str], body: JSON) -> Reply:
    return 200, stub._repo_json(stub._repo(m["owner"], m["name"]))


def _create_pull(stub: GitHubStub, m: re.Match[str], query: dict[str, str], body: JSON) -> Reply:
    repo = stub._repo(m["owner"], m["name"])
    if not isinstance(body, dict):
        return error_reply(400, "Problems parsing JSON")
    for name in ("head", "base", "title"):
        if not body.get(name):
            raise ValidationFailed("missing_field", field_name=name)
    head: str = body["head"]
    head_owner, _, head_ref = head.rpartition(":")
    head_owner = head_owner or repo.owner
    label = f"{head_owner}:{head_ref}"
    if head_ref == body["base"] and head_owner == repo.owner:
        raise ValidationFailed("custom", f"No commits between {body['base']} and {head_ref}")
    if any(p["state"] == "open" and p["head"]["label"] == label for p in repo.pulls):
        raise ValidationFailed("custom", f"A pull request already exists for {label}.")
    number = repo.next_number()
    api, html = stub._api(repo), stub._html(repo)
    stamp = now()
    pull: dict[str, Any] = {
        "id": next(stub._ids),
        "node_id": f"PR_{repo.id}_{number}",
        "number": number,
        "url": f"{api}/pulls/{number}",
        "html_url": f"{html}/pull/{number}",
        "diff_url": f"{html}/pull/{number}.diff",
        "patch_url": f"{html}/pull/{number}.patch",
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
        raise ValidationFailed("invalid", f"state must be open, closed or all, not {state!r}", "state")
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
    return (200, pull) if pull is not None else error_reply(404, "Not Found")


def _patch_pull(stub: GitHubStub, m: re.Match[str], query: dict[str, str], body: JSON) -> Reply:
    pull = stub._pull(stub._repo(m["owner"], m["name"]), m["number"])
    if pull is None:
        return error_reply(404, "Not Found")
    if not isinstance(body, dict):
        return error_reply(400, "Problems parsing JSON")
    if "state" in body and body["state"] not in {"open", "closed"}:
        raise ValidationFailed("invalid", field_name="state")
    for name in ("title", "body", "state", "maintainer_can_modify"):
        if name in body:
            pull[name] = body[name]
    if "base" in body:
        pull["base"]["ref"] = body["base"]
        pull["base"]["label"] = f"{m['owner']}:{body['base']}"
    pull["closed_at"] = now() if pull["state"] == "closed" else None
    pull["updated_at"] = now()
    return 200, pull


def _get_issue(stub: GitHubStub, m: re.Match[str], query: dict[str, str], body: JSON) -> Reply:
    item = stub._repo(m["owner"], m["name"]).issue_or_pull(m["number"])
    return (200, stub._issue_json(item)) if item is not None else error_reply(404, "Not Found")


def _add_labels(stub: GitHubStub, m: re.Match[str], query: dict[str, str], body: JSON) -> Reply:
    item = stub._repo(m["owner"], m["name"]).issue_or_pull(m["number"])
    if item is None:
        return error_reply(404, "Not Found")
    names = body.get("labels") if isinstance(body, dict) else body
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ValidationFailed("invalid", "labels must be a list of strings", "labels")
    present = {label["name"] for label in item["labels"]}
    item["labels"].extend(label_json(n) for n in dict.fromkeys(names) if n not in present)
    return 200, item["labels"]


def _list_labels(stub: GitHubStub, m: re.Match[str], query: dict[str, str], body: JSON) -> Reply:
    item = stub._repo(m["owner"], m["name"]).issue_or_pull(m["number"])
    return (200, item["labels"]) if item is not None else error_reply(404, "Not Found")


def _list_comments(stub: GitHubStub, m: re.Match[str], query: dict[str, str], body: JSON) -> Reply:
    repo = stub._repo(m["owner"], m["name"])
    if repo.issue_or_pull(m["number"]) is None:
        return error_reply(404, "Not Found")
    return 200, list(repo.comments.get(int(m["number"]), []))


def _create_comment(stub: GitHubStub, m: re.Match[str], query: dict[str, str], body: JSON) -> Reply:
    repo = stub._repo(m["owner"], m["name"])
    item = repo.issue_or_pull(m["number"])
    if item is None:
        return error_reply(404, "Not Found")
    return 201, stub._new_comment(repo, item, stub.login, _comment_body(body))


def _get_comment(stub: GitHubStub, m: re.Match[str], query: dict[str, str], body: JSON) -> Reply:
    comment = stub._repo(m["owner"], m["name"]).comment(m["id"])
    return (200, comment) if comment is not None else error_reply(404, "Not Found")


def _edit_comment(stub: GitHubStub, m: re.Match[str], query: dict[str, str], body: JSON) -> Reply:
    comment = stub._repo(m["owner"], m["name"]).comment(m["id"])
    if comment is None:
        return error_reply(404, "Not Found")
    comment.update(body=_comment_body(body), updated_at=now())
    return 200, comment


def _list_reviews(stub: GitHubStub, m: re.Match[str], query: dict[str, str], body: JSON) -> Reply:
    repo = stub._repo(m["owner"], m["name"])
    if stub._pull(repo, m["number"]) is None:
        return error_reply(404, "Not Found")
    return 200, list(repo.reviews.get(int(m["number"]), []))


def _review(stub: GitHubStub, m: re.Match[str]) -> dict[str, Any] | None:
    reviews = stub._repo(m["owner"], m["name"]).reviews.get(int(m["number"]), [])
    return next((r for r in reviews if str(r["id"]) == m["id"]), None)


def _get_review(stub: GitHubStub, m: re.Match[str], query: dict[str, str], body: JSON) -> Reply:
    review = _review(stub, m)
    return (200, review) if review is not None else error_reply(404, "Not Found")


def _list_review_comments(stub: GitHubStub, m: re.Match[str], query: dict[str, str], body: JSON) -> Reply:
    repo = stub._repo(m["owner"], m["name"])
    if stub._pull(repo, m["number"]) is None:
        return error_reply(404, "Not Found")
    return 200, list(repo.review_comments.get(int(m["number"]), []))


def _list_comments_of_review(stub: GitHubStub, m: re.Match[str], query: dict[str, str], body: JSON) -> Reply:
    review = _review(stub, m)
    if review is None:
        return error_reply(404, "Not Found")
    comments = stub._repo(m["owner"], m["name"]).review_comments.get(int(m["number"]), [])
    return 200, [c for c in comments if c["pull_request_review_id"] == review["id"]]


def _permission(stub: GitHubStub, m: re.Match[str], query: dict[str, str], body: JSON) -> Reply:
    login = unquote(m["login"])
    role = stub._repo(m["owner"], m["name"]).collaborators.get(login)
    if role is None:
        return error_reply(404, "Not Found")
    # ROLES runs from the most to the least: a role grants itself and every one after it.
    granted = list(ROLES)[list(ROLES).index(role) :]
    user = {
        **stub._user(login),
        "permissions": {
            "admin": "admin" in granted,
            "maintain": "maintain" in granted,
            "push": "write" in granted,
            "triage": "triage" in granted,
            "pull": True,
        },
        "role_name": role,
    }
    return 200, {"permission": ROLES[role], "role_name": role, "user": user}


def _create_check_run(stub: GitHubStub, m: re.Match[str], query: dict[str, str], body: JSON) -> Reply:
    repo = stub._repo(m["owner"], m["name"])
    if not isinstance(body, dict) or not body.get("name") or not body.get("head_sha"):
        raise ValidationFailed("missing_field", "name and head_sha are required", resource="CheckRun")
    status, conclusion = body.get("status", "queued"), body.get("conclusion")
    if conclusion is not None and conclusion not in CONCLUSIONS:
        raise ValidationFailed("invalid", field_name="conclusion", resource="CheckRun")
    if status == "completed" and conclusion is None:
        raise ValidationFailed("missing_field", field_name="conclusion", resource="CheckRun")
    suite = stub._suite(repo, stub.app_slug, body["head_sha"], None)
    return 201, stub._new_check_run(repo, suite, body["name"], status, conclusion, body.get("output") or {})


def _on_ref(suite: dict[str, Any], ref: str) -> bool:
    """Whether a check suite is on ``ref``: its commit's SHA, or its branch as ``heads/NAME``."""
    return suite["head_sha"] == ref or (ref.startswith("heads/") and suite["head_branch"] == ref[6:])


def _list_check_runs(stub: GitHubStub, m: re.Match[str], query: dict[str, str], body: JSON) -> Reply:
    repo = stub._repo(m["owner"], m["name"])
    ref = unquote(m["ref"])
    suites = {s["id"] for s in repo.check_suites if _on_ref(s, ref)}
    runs = [
        r
        for r in repo.check_runs
        if r["check_suite"]["id"] in suites
        and query.get("check_name", r["name"]) == r["name"]
        and query.get("status", r["status"]) == r["status"]
    ]
    if query.get("filter", "latest") == "latest":
        # A re-run replaces the run of the same name: only the newest of each name counts.
        newest = {r["name"]: r for r in runs}
        runs = [r for r in runs if newest[r["name"]] is r]
    return 200, {"total_count": len(runs), "check_runs": runs}


def _list_check_suites(stub: GitHubStub, m: re.Match[str], query: dict[str, str], body: JSON) -> Reply:
    ref = unquote(m["ref"])
    suites = [s for s in stub._repo(m["owner"], m["name"]).check_suites if _on_ref(s, ref)]
    return 200, {"total_count": len(suites), "check_suites": suites}


def _rate_limit(stub: GitHubStub, m: re.Match[str], query: dict[str, str], body: JSON) -> Reply:
    core = {"limit": 5000, "remaining": 4999, "reset": 4102444800, "used": 1, "resource": "core"}
    return 200, {"resources": {"core": core}, "rate": core}


ROUTES: list[tuple[str, re.Pattern[str], Route]] = [
    ("GET", re.compile(r"/rate_limit"), _rate_limit),
    ("GET", re.compile(_REPO), _get_repo),
    ("POST", re.compile(_REPO + r"/pulls"), _create_pull),
    ("POST", re.compile(_REPO + r"/check-runs"), _create_check_run),
    ("GET", re.compile(_REPO + r"/pulls"), _list_pulls),
    ("GET", re.compile(_REPO + r"/pulls/(?P<number>\d+)"), _get_pull),
    ("PATCH", re.compile(_REPO + r"/pulls/(?P<number>\d+)"), _patch_pull),
    ("GET", re.compile(_REPO + r"/issues/(?P<number>\d+)"), _get_issue),
    ("GET", re.compile(_REPO + r"/issues/(?P<number>\d+)/labels"), _list_labels),
    ("POST", re.compile(_REPO + r"/issues/(?P<number>\d+)/labels"), _add_labels),
    ("GET", re.compile(_REPO + r"/issues/(?P<number>\d+)/comments"), _list_comments),
    ("POST", re.compile(_REPO + r"/issues/(?P<number>\d+)/comments"), _create_comment),
    ("GET", re.compile(_REPO + r"/issues/comments/(?P<id>\d+)"), _get_comment),
    ("PATCH", re.compile(_REPO + r"/issues/comments/(?P<id>\d+)"), _edit_comment),
    ("GET", re.compile(_REPO + r"/pulls/(?P<number>\d+)/reviews"), _list_reviews),
    ("GET", re.compile(_REPO + r"/pulls/(?P<number>\d+)/reviews/(?P<id>\d+)"), _get_review),
    (
        "GET",
        re.compile(_REPO + r"/pulls/(?P<number>\d+)/reviews/(?P<id>\d+)/comments"),
        _list_comments_of_review,
    ),
    ("GET", re.compile(_REPO + r"/pulls/(?P<number>\d+)/comments"), _list_review_comments),
    ("GET", re.compile(_REPO + r"/collaborators/(?P<login>[^/]+)/permission"), _permission),
    ("GET", re.compile(_REPO + r"/commits/(?P<ref>.+)/check-runs"), _list_check_runs),
    ("GET", re.compile(_REPO + r"/commits/(?P<ref>.+)/check-suites"), _list_check_suites),
]
