"""What follow-ups read and write on GitHub: comments, a pull request's conversation, collaborator
permissions, failing checks, issues, and signed webhook deliveries. Through the real PyGithub
client against the GitHub stand-in over real HTTP, and a real webhook endpoint."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import requests
from pydantic import SecretStr

from codeworker.config import Settings
from codeworker.coordination.keys import Keys, repo_id
from codeworker.coordination.registry import BranchRegistry
from codeworker.github import (
    CHECK_SUMMARY_LIMIT,
    CHECK_TITLE_LIMIT,
    CheckRunReport,
    GitHubError,
    IssueDetails,
    PullRequests,
)
from codeworker.loopback.github_stub import GitHubStub
from codeworker.worker.health import Health
from codeworker.worker.http import HttpServer, WorkerState, create_app, signature
from tests.support import github_client
from tests.support.github_client import NAME, OWNER, TOKEN

SECRET = "webhook-secret-for-tests"
SHA, OTHER_SHA = "a" * 40, "b" * 40
BRANCH = "codeworker/fix-1"


# The shared fixtures, bound to this module's names: pytest finds them here for these tests only.
stub = github_client.stub
prs = github_client.prs


@pytest.fixture()
def pr(prs: PullRequests) -> int:
    """The number of an open pull request from BRANCH, opened by codeworker."""
    return prs.open(OWNER, NAME, BRANCH, "main", "Fix the widget", "Body", False, []).number


@pytest.fixture()
def endpoint(redis_client: redis.Redis) -> Iterator[str]:
    """The worker's real webhook endpoint (signature checked with SECRET), on loopback."""
    state = WorkerState(
        hostname="test",
        concurrency=1,
        health=lambda: Health(live=True, ready=True),
        active_jobs=list,
        registry=BranchRegistry(redis_client, Keys()),
        started_at=time.time(),
    )
    http = HttpServer(create_app(Settings(webhook_secret=SecretStr(SECRET)), state), "127.0.0.1", 0).start()
    yield f"http://127.0.0.1:{http.port}/webhooks/github"
    http.stop()


# -- comments ------------------------------------------------------------------------------------


def test_comment_then_edit_it_in_place(stub: GitHubStub, prs: PullRequests, pr: int) -> None:
    comment_id = prs.comment(OWNER, NAME, pr, "queued")
    prs.edit_comment(OWNER, NAME, comment_id, "iteration 2/5")

    [comment] = stub.issue_comments(OWNER, NAME, pr)
    assert comment["id"] == comment_id
    assert comment["body"] == "iteration 2/5"
    assert comment["user"]["login"] == stub.login
    assert comment["html_url"].endswith(f"/pull/{pr}#issuecomment-{comment_id}")
    [create] = stub.requests_for("POST", rf"/issues/{pr}/comments$")
    assert create.body == {"body": "queued"}
    # One PATCH and no read first: a progress comment is edited often.
    [edit] = stub.requests_for("PATCH", rf"/issues/comments/{comment_id}$")
    assert edit.body == {"body": "iteration 2/5"}
    assert stub.requests_for("GET", r"/comments") == []


def test_comment_errors_are_github_errors_without_the_token(prs: PullRequests, pr: int) -> None:
    with pytest.raises(GitHubError) as missing:
        prs.comment(OWNER, NAME, pr + 100, "hello")
    with pytest.raises(GitHubError) as unknown:
        prs.edit_comment(OWNER, NAME, 999_999, "hello")
    with pytest.raises(GitHubError) as empty:
        prs.comment(OWNER, NAME, pr, "")

    assert (missing.value.status, unknown.value.status, empty.value.status) == (404, 404, 422)
    assert "Validation Failed" in str(empty.value)
    for error in (missing.value, unknown.value, empty.value):
        assert TOKEN not in str(error)


# -- the conversation ----------------------------------------------------------------------------


def test_conversation_has_comments_reviews_and_inline_comments_oldest_first(
    stub: GitHubStub, prs: PullRequests, pr: int
) -> None:
    stub.add_comment(
        OWNER, NAME, pr, "@codeworker also handle []", user="alice", created_at="2024-05-01T09:00:00Z"
    )
    review = stub.add_review(
        OWNER,
        NAME,
        pr,
        user="bob",
        body="Two things",
        state="CHANGES_REQUESTED",
        comments=[
            {"path": "app/widget.py", "line": 12, "body": "this can be None"},
            {"path": "tests/test_widget.py", "line": 3, "body": "test the empty case"},
        ],
        submitted_at="2024-05-01T10:00:00Z",
    )
    stub.add_review(OWNER, NAME, pr, user="carol", state="APPROVED", submitted_at="2024-05-01T10:30:00Z")
    stub.add_comment(
        OWNER, NAME, pr, "Coverage: 91%", user="coverage-bot[bot]", created_at="2024-05-01T11:00:00Z"
    )

    entries = prs.conversation(OWNER, NAME, pr)

    assert [(e.kind, e.author, e.body) for e in entries] == [
        ("comment", "alice", "@codeworker also handle []"),
        ("review", "bob", "Two things"),
        ("review_comment", "bob", "this can be None"),
        ("review_comment", "bob", "test the empty case"),
        ("comment", "coverage-bot[bot]", "Coverage: 91%"),
    ]  # carol's approval has no body: nothing was said
    first, body, inline, second, bot = entries
    assert first.author_type == "User" and not first.by_bot
    assert bot.author_type == "Bot" and bot.by_bot
    assert body.state == "CHANGES_REQUESTED" and body.id == review["id"]
    assert (inline.path, inline.line, inline.review_id) == ("app/widget.py", 12, review["id"])
    assert (second.path, second.line) == ("tests/test_widget.py", 3)
    assert first.path is None and first.line is None
    assert first.created_at.isoformat() == "2024-05-01T09:00:00+00:00"
    assert bot.created_at.isoformat() == "2024-05-01T11:00:00+00:00"


def test_conversation_of_a_pull_request_without_anything_said(prs: PullRequests, pr: int) -> None:
    assert prs.conversation(OWNER, NAME, pr) == []


def test_conversation_of_a_missing_pull_request_is_a_404(prs: PullRequests) -> None:
    with pytest.raises(GitHubError) as caught:
        prs.conversation(OWNER, NAME, 41)
    assert caught.value.status == 404


# -- permissions ---------------------------------------------------------------------------------


@pytest.mark.parametrize("role", ["admin", "maintain", "write", "triage", "read"])
def test_permission_is_the_collaborators_role(stub: GitHubStub, prs: PullRequests, role: str) -> None:
    stub.set_permission(OWNER, NAME, "alice", role)

    assert prs.permission(OWNER, NAME, "alice") == role


def test_a_non_collaborator_has_none(stub: GitHubStub, prs: PullRequests) -> None:
    stub.set_permission(OWNER, NAME, "mallory", "write")
    stub.set_permission(OWNER, NAME, "mallory", "none")

    assert prs.permission(OWNER, NAME, "mallory") == "none"
    assert prs.permission(OWNER, NAME, "ci-helper[bot]") == "none"
    # The login is one path segment, however it is spelt.
    assert [r.path for r in stub.requests_for("GET", r"/permission$")] == [
        f"/repos/{OWNER}/{NAME}/collaborators/mallory/permission",
        f"/repos/{OWNER}/{NAME}/collaborators/ci-helper%5Bbot%5D/permission",
    ]


def test_permission_is_cached_per_repository_and_login(stub: GitHubStub, prs: PullRequests) -> None:
    stub.set_permission(OWNER, NAME, "alice", "write")

    assert prs.permission(OWNER, NAME, "alice") == "write"
    stub.set_permission(OWNER, NAME, "alice", "read")
    assert prs.permission(OWNER, NAME, "alice") == "write"  # within the TTL: the cached answer
    assert len(stub.requests_for("GET", r"/collaborators/alice/permission$")) == 1

    assert prs.permission(OWNER, NAME, "bob") == "none"
    assert prs.permission(OWNER, "gadgets", "alice") == "none"
    assert prs.permission(OWNER, NAME, "bob") == "none"  # a "none" is cached too
    assert len(stub.requests_for("GET", r"/permission$")) == 3


def test_an_expired_permission_is_asked_again(stub: GitHubStub) -> None:
    stub.set_permission(OWNER, NAME, "alice", "admin")
    with PullRequests(
        stub.url, SecretStr(TOKEN), seconds_between_writes=0.0, timeout=5, permission_ttl=0.0
    ) as client:
        assert client.permission(OWNER, NAME, "alice") == "admin"
        stub.set_permission(OWNER, NAME, "alice", "none")
        assert client.permission(OWNER, NAME, "alice") == "none"
    assert len(stub.requests_for("GET", r"/permission$")) == 2


def test_a_failed_permission_check_is_an_error_and_not_cached(stub: GitHubStub, prs: PullRequests) -> None:
    stub.set_permission(OWNER, NAME, "alice", "write")
    stub.fail_next("GET", r"/permission$", status=503, after_processing=False, times=3)

    with pytest.raises(GitHubError) as caught:
        prs.permission(OWNER, NAME, "alice")

    assert caught.value.status == 503 and TOKEN not in str(caught.value)
    assert prs.permission(OWNER, NAME, "alice") == "write"


# -- failing checks ------------------------------------------------------------------------------


def test_failing_checks_of_one_commit(stub: GitHubStub, prs: PullRequests) -> None:
    stub.add_check_run(
        OWNER, NAME, SHA, "tests", title="2 tests failed", summary="test_empty: AssertionError"
    )
    stub.add_check_run(OWNER, NAME, SHA, "lint", conclusion="success", summary="clean")
    stub.add_check_run(OWNER, NAME, SHA, "build", conclusion="timed_out", summary="ran 6 h")
    stub.add_check_run(OWNER, NAME, SHA, "deploy", conclusion="cancelled")
    stub.add_check_run(OWNER, NAME, OTHER_SHA, "other-commit", summary="not this one")

    assert prs.failing_checks(OWNER, NAME, SHA) == [
        CheckRunReport(name="build", conclusion="timed_out", title="", summary="ran 6 h"),
        CheckRunReport(
            name="tests", conclusion="failure", title="2 tests failed", summary="test_empty: AssertionError"
        ),
    ]
    [asked] = stub.requests_for("GET", rf"/commits/{SHA}/check-runs$")
    assert "filter=latest" in asked.path


def test_a_check_that_passed_when_run_again_is_not_failing(stub: GitHubStub, prs: PullRequests) -> None:
    stub.add_check_run(OWNER, NAME, SHA, "tests", summary="flaky")
    stub.add_check_run(OWNER, NAME, SHA, "tests", conclusion="success")

    assert prs.failing_checks(OWNER, NAME, SHA) == []


def test_a_long_check_output_is_trimmed(stub: GitHubStub, prs: PullRequests) -> None:
    stub.add_check_run(OWNER, NAME, SHA, "tests", title="t" * 500, summary="x" * 100_000)

    [check] = prs.failing_checks(OWNER, NAME, SHA)

    assert len(check.title) == CHECK_TITLE_LIMIT and check.title.endswith("…")
    assert len(check.summary) == CHECK_SUMMARY_LIMIT and check.summary.endswith("…")


def test_codeworkers_own_check_runs_are_recorded_and_listed(stub: GitHubStub, prs: PullRequests) -> None:
    report = CheckRunReport(
        name="codeworker/verification", conclusion="neutral", title="not verified", summary=""
    )
    prs.check_run(OWNER, NAME, SHA, report)

    [run] = stub.check_runs(OWNER, NAME)
    assert (run["name"], run["head_sha"], run["conclusion"]) == ("codeworker/verification", SHA, "neutral")
    assert run["app"]["slug"] == stub.app_slug
    assert prs.failing_checks(OWNER, NAME, SHA) == []  # neutral is no failure


# -- issues --------------------------------------------------------------------------------------


def test_issue_has_title_body_labels_and_author(stub: GitHubStub, prs: PullRequests, pr: int) -> None:
    issue = stub.add_issue(
        OWNER, NAME, "Widgets crash", "On an empty list", labels=["codeworker"], user="dana"
    )

    assert issue["number"] == pr + 1  # issues and pull requests are numbered in one sequence
    assert prs.issue(OWNER, NAME, issue["number"]) == IssueDetails(
        number=pr + 1,
        title="Widgets crash",
        body="On an empty list",
        labels=("codeworker",),
        author="dana",
        author_type="User",
        url=issue["html_url"],
        is_pull_request=False,
    )
    assert prs.issue(OWNER, NAME, pr).is_pull_request is True
    with pytest.raises(GitHubError) as caught:
        prs.issue(OWNER, NAME, pr + 2)
    assert caught.value.status == 404


# -- REST shapes the client does not read but a realistic one would --------------------------------


def rest(stub: GitHubStub, path: str) -> tuple[int, Any]:
    """GET ``path`` of the stand-in as a client other than PyGithub would."""
    response = requests.get(stub.url + path, headers={"Authorization": f"token {TOKEN}"}, timeout=5)
    return response.status_code, response.json()


def test_rest_shapes_of_reviews_permissions_and_check_suites(stub: GitHubStub, pr: int) -> None:
    def get(path: str) -> tuple[int, Any]:
        return rest(stub, path)

    repo = f"/repos/{OWNER}/{NAME}"
    review = stub.add_review(
        OWNER, NAME, pr, user="bob", comments=[{"path": "a.py", "line": 4, "body": "why?"}]
    )
    stub.add_review(OWNER, NAME, pr, user="carol", comments=[{"path": "b.py", "line": 1, "body": "ok"}])
    stub.set_permission(OWNER, NAME, "bob", "maintain")
    run = stub.add_check_run(OWNER, NAME, SHA, "tests", head_branch=BRANCH)
    comment = stub.add_comment(OWNER, NAME, pr, "hi", user="bob")

    assert get(f"{repo}/issues/comments/{comment['id']}") == (200, comment)
    assert get(f"{repo}/pulls/{pr}/reviews/{review['id']}") == (200, review)
    status, [comment] = get(f"{repo}/pulls/{pr}/reviews/{review['id']}/comments")
    assert status == 200
    assert {k: comment[k] for k in ("path", "line", "body", "pull_request_review_id")} == {
        "path": "a.py",
        "line": 4,
        "body": "why?",
        "pull_request_review_id": review["id"],
    }
    assert comment["user"]["login"] == "bob" and comment["diff_hunk"].startswith("@@")
    assert comment["commit_id"] == review["commit_id"]
    status, permission = get(f"{repo}/collaborators/bob/permission")
    assert status == 200
    assert (permission["permission"], permission["role_name"]) == ("write", "maintain")  # legacy: write
    assert permission["user"]["login"] == "bob" and permission["user"]["role_name"] == "maintain"
    assert permission["user"]["permissions"] == {
        "admin": False,
        "maintain": True,
        "push": True,
        "triage": True,
        "pull": True,
    }
    assert get(f"{repo}/collaborators/nobody/permission")[0] == 404
    _, suites = get(f"{repo}/commits/heads/{BRANCH}/check-suites")
    [suite] = suites["check_suites"]
    assert suite["id"] == run["check_suite"]["id"]
    assert (suite["status"], suite["conclusion"], suite["head_sha"]) == ("completed", "failure", SHA)
    assert [p["number"] for p in suite["pull_requests"]] == [pr]
    assert get(f"{repo}/commits/{OTHER_SHA}/check-runs") == (200, {"total_count": 0, "check_runs": []})


# -- webhook deliveries --------------------------------------------------------------------------


def test_a_delivery_is_signed_like_githubs_and_the_endpoint_accepts_it(
    stub: GitHubStub, endpoint: str
) -> None:
    status, answer = stub.webhooks.deliver(endpoint, SECRET, "ping", stub.webhooks.ping(OWNER, NAME))

    assert (status, answer) == (200, {"event": "ping", "ok": True})
    [delivery] = stub.webhooks.sent
    headers = delivery.headers
    assert headers["X-Hub-Signature-256"] == signature(SECRET, delivery.body)
    assert headers["X-GitHub-Event"] == "ping"
    assert uuid.UUID(headers["X-GitHub-Delivery"]) and delivery.id == headers["X-GitHub-Delivery"]
    assert headers["User-Agent"].startswith("GitHub-Hookshot/")
    assert headers["Content-Type"] == "application/json"


def test_an_unsigned_delivery_is_refused(stub: GitHubStub, endpoint: str) -> None:
    status, answer = stub.webhooks.deliver(endpoint, None, "ping", stub.webhooks.ping(OWNER, NAME))

    assert status == 401 and answer == {"error": "missing X-Hub-Signature-256"}
    assert "X-Hub-Signature-256" not in stub.webhooks.sent[0].headers


def test_a_delivery_sent_again_keeps_its_id_and_bytes(stub: GitHubStub, endpoint: str) -> None:
    payload = stub.webhooks.ping(OWNER, NAME)
    stub.webhooks.deliver(
        endpoint, SECRET, "ping", payload, delivery_id="72d3162e-cc78-11e3-81ab-4c9367dc0958"
    )
    stub.webhooks.deliver(endpoint, SECRET, "ping", payload)

    first, fresh = stub.webhooks.sent
    stub.webhooks.redeliver(first)  # what the endpoint makes of a repeat is its own business

    again = stub.webhooks.sent[-1]
    assert again.id == first.id == "72d3162e-cc78-11e3-81ab-4c9367dc0958"
    assert again.body == first.body and again.headers == first.headers
    assert fresh.id != first.id


# -- webhook payloads ----------------------------------------------------------------------------


def test_issue_comment_payload_on_a_pull_request(stub: GitHubStub, pr: int) -> None:
    stub.add_repo(OWNER, NAME, clone_url=f"http://127.0.0.1:9/{OWNER}/{NAME}.git")
    comment = stub.add_comment(OWNER, NAME, pr, "@codeworker please", user="ci-helper[bot]")

    payload = stub.webhooks.issue_comment(OWNER, NAME, comment["id"], installation_id=7)

    assert payload["action"] == "created"
    assert payload["comment"] == comment
    assert payload["issue"]["number"] == pr
    assert payload["issue"]["pull_request"]["html_url"].endswith(f"/pull/{pr}")
    assert payload["sender"]["login"] == "ci-helper[bot]" and payload["sender"]["type"] == "Bot"
    assert payload["installation"]["id"] == 7
    # The repository is where the git server has it, as repo_id names it for the branch registry.
    assert repo_id(payload["repository"]["html_url"]) == repo_id(f"http://127.0.0.1:9/{OWNER}/{NAME}.git")
    assert payload["repository"]["clone_url"] == f"http://127.0.0.1:9/{OWNER}/{NAME}.git"
    assert payload["repository"]["full_name"] == f"{OWNER}/{NAME}"


def test_issue_comment_payload_on_an_issue_has_no_pull_request(stub: GitHubStub) -> None:
    issue = stub.add_issue(OWNER, NAME, "Crash", "on []")
    comment = stub.add_comment(OWNER, NAME, issue["number"], "@codeworker fix this", user="alice")

    payload = stub.webhooks.issue_comment(OWNER, NAME, comment["id"], sender="alice")

    assert "pull_request" not in payload["issue"] and "installation" not in payload
    assert payload["issue"]["comments"] == 1 and payload["sender"]["type"] == "User"


def test_review_and_review_comment_payloads(stub: GitHubStub, pr: int) -> None:
    review = stub.add_review(
        OWNER,
        NAME,
        pr,
        user="bob",
        body="@codeworker see inline",
        state="CHANGES_REQUESTED",
        comments=[{"path": "app.py", "line": 7, "body": "off by one"}],
    )
    [inline] = rest(stub, f"/repos/{OWNER}/{NAME}/pulls/{pr}/comments")[1]

    submitted = stub.webhooks.pull_request_review(OWNER, NAME, review["id"])
    commented = stub.webhooks.pull_request_review_comment(OWNER, NAME, inline["id"])

    assert submitted["action"] == "submitted"
    assert submitted["review"]["state"] == "changes_requested"  # lower case in webhooks
    assert submitted["review"]["body"] == "@codeworker see inline"
    assert submitted["pull_request"]["number"] == pr and submitted["pull_request"]["head"]["ref"] == BRANCH
    assert submitted["sender"]["login"] == "bob"
    assert commented["action"] == "created"
    comment = commented["comment"]
    assert (comment["path"], comment["line"], comment["body"]) == ("app.py", 7, "off by one")
    assert comment["pull_request_review_id"] == review["id"] and comment["commit_id"] == review["commit_id"]
    assert comment["diff_hunk"].startswith("@@") and comment["user"]["login"] == "bob"
    assert commented["pull_request"]["number"] == pr


def test_check_suite_and_check_run_payloads(stub: GitHubStub, pr: int) -> None:
    run = stub.add_check_run(OWNER, NAME, SHA, "tests", summary="1 failed", head_branch=BRANCH)

    suite_event = stub.webhooks.check_suite(OWNER, NAME, run["check_suite"]["id"])
    run_event = stub.webhooks.check_run(OWNER, NAME, run["id"])

    suite = suite_event["check_suite"]
    assert suite_event["action"] == "completed"
    assert (suite["conclusion"], suite["head_sha"], suite["head_branch"]) == ("failure", SHA, BRANCH)
    [pull] = suite["pull_requests"]
    assert (pull["number"], pull["head"]["ref"], pull["head"]["sha"]) == (pr, BRANCH, SHA)
    assert suite_event["sender"]["login"] == stub.login  # who pushed the commit CI ran on
    check = run_event["check_run"]
    assert (check["name"], check["conclusion"], check["output"]["summary"]) == (
        "tests",
        "failure",
        "1 failed",
    )
    assert check["check_suite"]["id"] == suite["id"] and check["check_suite"]["head_branch"] == BRANCH
    assert [p["number"] for p in check["pull_requests"]] == [pr]


def test_issues_labeled_payload(stub: GitHubStub) -> None:
    issue = stub.add_issue(OWNER, NAME, "Crash", "on []", labels=["bug", "codeworker:error_fix"], user="dana")

    payload = stub.webhooks.issues(OWNER, NAME, issue["number"], label="codeworker:error_fix", sender="erin")

    assert payload["action"] == "labeled"
    assert payload["label"]["name"] == "codeworker:error_fix"
    assert [la["name"] for la in payload["issue"]["labels"]] == ["bug", "codeworker:error_fix"]
    assert payload["issue"]["user"]["login"] == "dana" and payload["sender"]["login"] == "erin"
    with pytest.raises(ValueError, match="no label"):
        stub.webhooks.issues(OWNER, NAME, issue["number"], label="codeworker")
