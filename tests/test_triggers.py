"""What GitHub events start, decided by ``Triggers`` against the GitHub stand-in and a real Redis;
the jobs it would queue are collected by the sender it is given (the worker's sends by task name;
tests/test_follow_ups.py runs them through a real worker)."""

from __future__ import annotations

from typing import Any

import pytest
import redis

from codeworker.config import Settings
from codeworker.coordination.deliveries import Deliveries
from codeworker.coordination.keys import Keys, repo_id
from codeworker.coordination.registry import BranchRecord, BranchRegistry, BranchStatus
from codeworker.github import PullRequests
from codeworker.loopback.github_stub import GitHubStub
from codeworker.triggers import Triggers
from tests.support import github_client

stub = github_client.stub
prs = github_client.prs
OWNER, NAME = github_client.OWNER, github_client.NAME
URL = "https://github.com/acme/widgets"
BRANCH = "codeworker/error_fix/op1-abc-fix"


@pytest.fixture()
def sent() -> list[tuple[str, dict[str, Any], str]]:
    return []


@pytest.fixture()
def registry(redis_client: redis.Redis) -> BranchRegistry:
    return BranchRegistry(redis_client, Keys())


@pytest.fixture()
def triggers(stub: GitHubStub, prs: PullRequests, registry: BranchRegistry, sent: list) -> Triggers:
    stub.add_repo(OWNER, NAME, clone_url=URL + ".git")
    stub.set_permission(OWNER, NAME, "alice", "write")
    settings = Settings(mention="codeworker", max_ci_follow_ups=2)
    deliveries = Deliveries(registry.client, registry.keys)
    return Triggers(
        settings, registry, prs, deliveries, lambda task, job, task_id: sent.append((task, job, task_id))
    )


def open_pr(prs: PullRequests, registry: BranchRegistry, head: str = "a" * 40) -> int:
    number = prs.open(OWNER, NAME, BRANCH, "main", "Fix", "Body", False, []).number
    registry.register(
        BranchRecord.new(
            repository=URL, repo=repo_id(URL), branch=BRANCH, operation_id="op1", operation_type="error_fix"
        )
    )
    registry.transition(repo_id(URL), BRANCH, BranchStatus.PUSHED)
    registry.transition(repo_id(URL), BRANCH, BranchStatus.PR_OPEN, pr_number=number, head=head)
    return number


@pytest.mark.parametrize(
    ("body", "mentioned"),
    [
        ("@codeworker please", True),
        ("thanks @CodeWorker!", True),
        ("(@codeworker) handle it", True),
        ("@codeworkers please", False),
        ("mail me at me@codeworker.dev", False),
        ("see github.com/@codeworker", False),
        ("codeworker, please", False),
    ],
)
def test_only_a_mention_of_the_handle_asks(triggers, stub, prs, registry, sent, body, mentioned) -> None:
    number = open_pr(prs, registry)
    comment = stub.add_comment(OWNER, NAME, number, body, user="alice")

    answer = triggers.handle("issue_comment", stub.webhooks.issue_comment(OWNER, NAME, comment["id"]), "d1")

    assert bool(sent) is mentioned, answer
    if mentioned:
        [(task, request, task_id)] = sent
        assert task == "codeworker.follow_up" and request["operation_id"] == "op1"
        assert request["instructions"] == body and request["requested_by"] == "alice"
        assert task_id.startswith(f"follow-up-comment-{comment['id']}-")


def test_a_mention_on_an_issue_starts_an_operation(triggers, stub, sent) -> None:
    issue = stub.add_issue(OWNER, NAME, "Totals are wrong", "The cart total ignores discounts.", user="bob")
    comment = stub.add_comment(OWNER, NAME, issue["number"], "@codeworker can you fix this?", user="alice")

    answer = triggers.handle(
        "issue_comment", stub.webhooks.issue_comment(OWNER, NAME, comment["id"]), "0f3e9a1c-x"
    )

    [(task, job, task_id)] = sent
    assert (
        task == "codeworker.feature_implementation"
        and answer.body["queued"] == job["operation_id"] == task_id
    )
    assert job["issue_number"] == issue["number"]
    assert job["description"] == "Totals are wrong\n\nThe cart total ignores discounts."
    assert job["repository"] == {"url": URL + ".git", "owner": OWNER, "name": NAME, "branch": "main"}


def test_a_label_that_is_not_codeworkers_or_names_no_type_starts_nothing(triggers, stub, sent) -> None:
    issue = stub.add_issue(OWNER, NAME, "x", labels=["bug", "codeworker:rewrite"], user="alice")

    bug = triggers.handle("issues", stub.webhooks.issues(OWNER, NAME, issue["number"], label="bug"), "d1")
    odd = triggers.handle(
        "issues", stub.webhooks.issues(OWNER, NAME, issue["number"], label="codeworker:rewrite"), "d2"
    )

    assert sent == [] and bug.body == {"ignored": "label bug"}
    assert odd.body["ignored"].startswith("rewrite is no operation type")


def test_a_failing_check_on_an_older_commit_or_a_passing_one_starts_nothing(
    triggers, stub, prs, registry, sent
) -> None:
    open_pr(prs, registry, head="b" * 40)
    old = stub.add_check_run(OWNER, NAME, "c" * 40, "ci", head_branch=BRANCH)
    green = stub.add_check_run(OWNER, NAME, "b" * 40, "ci", conclusion="success", head_branch=BRANCH)

    stale = triggers.handle("check_run", stub.webhooks.check_run(OWNER, NAME, old["id"]), "d1")
    passing = triggers.handle("check_run", stub.webhooks.check_run(OWNER, NAME, green["id"]), "d2")

    assert sent == []
    assert stale.body["ignored"].endswith("is not the head of an open codeworker pull request")
    assert passing.body == {"ignored": "check_run success"}


def test_codeworkers_own_account_never_triggers(stub, prs, registry, sent) -> None:
    stub.add_repo(OWNER, NAME, clone_url=URL + ".git")
    settings = Settings(github_login="cw-bot-user")
    deliveries = Deliveries(registry.client, registry.keys)
    triggers = Triggers(settings, registry, prs, deliveries, lambda *job: sent.append(job))
    number = open_pr(prs, registry)
    comment = stub.add_comment(OWNER, NAME, number, "@codeworker revision 1 pushed", user="cw-bot-user")

    answer = triggers.handle("issue_comment", stub.webhooks.issue_comment(OWNER, NAME, comment["id"]), "d1")

    assert sent == [] and answer.body == {"ignored": "cw-bot-user is a bot"}
