"""The GitHub stand-in's routes: the REST calls codeworker makes, answered in GitHub's JSON shapes.

Each route takes the stand-in (called with its lock held), the path's match, the query and the
parsed body, and returns a status and a JSON body; ``ROUTES`` maps a method and a path to one. A
route raises ``ValidationFailed`` to answer ``422 Validation Failed``, as GitHub does when a pull
request for the head already exists.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from codeworker.loopback.github_records import JSON, Reply, ValidationFailed, error_reply, now

if TYPE_CHECKING:
    from codeworker.loopback.github_stub import GitHubStub

Route = Callable[["GitHubStub", re.Match[str], dict[str, str], JSON], Reply]


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
    number = len(repo.pulls) + 1
    api = f"{stub.url}/repos/{repo.owner}/{repo.name}"
    stamp = now()
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
    return (200, _issue_json(pull)) if pull is not None else error_reply(404, "Not Found")


def _add_labels(stub: GitHubStub, m: re.Match[str], query: dict[str, str], body: JSON) -> Reply:
    pull = stub._pull(stub._repo(m["owner"], m["name"]), m["number"])
    if pull is None:
        return error_reply(404, "Not Found")
    names = body.get("labels") if isinstance(body, dict) else body
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ValidationFailed("invalid", "labels must be a list of strings", "labels")
    present = {label["name"] for label in pull["labels"]}
    pull["labels"].extend(_label(n) for n in dict.fromkeys(names) if n not in present)
    return 200, pull["labels"]


def _list_labels(stub: GitHubStub, m: re.Match[str], query: dict[str, str], body: JSON) -> Reply:
    pull = stub._pull(stub._repo(m["owner"], m["name"]), m["number"])
    return (200, pull["labels"]) if pull is not None else error_reply(404, "Not Found")


def _create_check_run(stub: GitHubStub, m: re.Match[str], query: dict[str, str], body: JSON) -> Reply:
    repo = stub._repo(m["owner"], m["name"])
    if not isinstance(body, dict) or not body.get("name") or not body.get("head_sha"):
        return error_reply(422, "Validation Failed")
    stamp = now()
    run = {
        "id": next(stub._ids),
        "name": body["name"],
        "head_sha": body["head_sha"],
        "status": body.get("status", "queued"),
        "conclusion": body.get("conclusion"),
        "output": {**(body.get("output") or {}), "annotations_count": 0},
        "started_at": stamp,
        "completed_at": stamp if body.get("status") == "completed" else None,
        "url": f"{stub.url}/repos/{repo.owner}/{repo.name}/check-runs/{len(repo.check_runs) + 1}",
        "html_url": f"{stub.url}/{repo.owner}/{repo.name}/runs/{len(repo.check_runs) + 1}",
    }
    repo.check_runs.append(run)
    return 201, run


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
]
