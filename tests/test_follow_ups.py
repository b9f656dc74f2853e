"""Talking to codeworker on a pull request, end to end: GitHub's webhook deliveries (built by the
GitHub stand-in, signed) reach a real worker's endpoint, which queues follow-ups and operations by
task name; the worker runs them with the agent and the scripted model, and the tests look at what
reached the remote, the pull request and Redis."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from celery import Celery
from celery.result import AsyncResult

from codeworker.coordination.keys import repo_id
from codeworker.coordination.registry import BranchRecord, BranchRegistry
from codeworker.loopback.github_stub import GitHubStub
from codeworker.loopback.gitserver import GitServer
from codeworker.pipeline.revision import PROGRESS_MARKER
from tests.conftest import ANTHROPIC_KEY, GITHUB_TOKEN
from tests.support import anthropic_stub as s
from tests.support.jobs import QUEUE, RESULT_TIMEOUT

SECRET = "follow-up-webhook-secret"

CALC = "def add(a, b):\n    return a + b\n"
CALC_MUL = CALC + "\n\ndef mul(a, b):\n    return a * b\n"
CALC_SUB = CALC_MUL + "\n\ndef sub(a, b):\n    return a - b\n"
MUL_TEST = "from calc import mul\n\n\ndef test_mul():\n    assert mul(2, 3) == 6\n"
SUB_TEST = "from calc import sub\n\n\ndef test_sub():\n    assert sub(5, 3) == 2\n"
ADD_TEST = "from calc import add\n\n\ndef test_add():\n    assert add(2, 3) == 5\n"
PROJECT = {
    "calc.py": CALC,
    "tests/test_add.py": ADD_TEST,
    "pytest.ini": "[pytest]\npythonpath = .\n",
    "AGENTS.md": "Keep every function one line long.\n",
}
WRITER = "alice"


@pytest.fixture(scope="module")
def worker_env(worker_env: dict, model: s.AnthropicStub) -> dict:
    return {
        **worker_env,
        "ANTHROPIC_BASE_URL": model.url,
        "CODEWORKER_SETUP_NETWORK": "none",
        "CODEWORKER_WEBHOOK_SECRET": SECRET,
        "CODEWORKER_MAX_CI_FOLLOW_UPS": "1",
    }


class PullRequest:
    """One repository with a codeworker pull request opened through the worker (mul added)."""

    def __init__(self, client: Celery, model: s.AnthropicStub, git: GitServer, stub: GitHubStub) -> None:
        self.client, self.model, self.git, self.stub = client, model, git, stub
        self.name = f"f-{uuid.uuid4().hex[:8]}"
        self.url = git.create_repo("acme", self.name, PROJECT)
        stub.add_repo("acme", self.name, clone_url=self.url)
        stub.set_permission("acme", self.name, WRITER, "write")
        self.operation_id = f"op-{uuid.uuid4().hex[:12]}"
        self.result: dict[str, Any] = {}

    def open(self) -> PullRequest:
        self.model.play(
            s.say(s.create("calc.py", CALC_MUL), s.create("tests/test_mul.py", MUL_TEST)), s.done()
        )
        job = {
            "operation_type": "feature_implementation",
            "description": "Add mul",
            "repository": {"url": self.url, "owner": "acme", "name": self.name},
            "operation_id": self.operation_id,
            "max_iterations": 1,
        }
        self.result = self.client.send_task("codeworker.feature_implementation", args=[job], queue=QUEUE).get(
            timeout=RESULT_TIMEOUT
        )
        assert self.result["status"] == "pr_open" and self.result["success"], self.result
        return self

    @property
    def number(self) -> int:
        return self.result["pr"]["number"]

    @property
    def branch(self) -> str:
        return self.result["branch"]

    def tip(self) -> str | None:
        return self.git.ref_sha("acme", self.name, self.branch)

    def record(self, registry: BranchRegistry) -> BranchRecord:
        record = registry.get(repo_id(self.url), self.branch)
        assert record is not None
        return record

    def comments(self) -> list[str]:
        return [c["body"] for c in self.stub.issue_comments("acme", self.name, self.number)]

    def comment(self, body: str, user: str = WRITER) -> tuple[int, Any]:
        made = self.stub.add_comment("acme", self.name, self.number, body, user=user)
        return self.deliver("issue_comment", self.stub.webhooks.issue_comment("acme", self.name, made["id"]))

    def deliver(self, event: str, payload: dict[str, Any], delivery_id: str | None = None) -> tuple[int, Any]:
        return self.stub.webhooks.deliver(
            self.webhook_url, SECRET, event, payload, delivery_id=delivery_id, timeout=30
        )

    webhook_url = ""


@pytest.fixture()
def pr(
    client: Celery, model: s.AnthropicStub, git_server: GitServer, github_stub: GitHubStub, worker
) -> PullRequest:
    opened = PullRequest(client, model, git_server, github_stub)
    opened.webhook_url = f"http://127.0.0.1:{worker.env['PORT']}/webhooks/github"
    return opened.open()


def outcome(client: Celery, answer: Any) -> dict[str, Any]:
    """The result of the job a delivery queued."""
    assert isinstance(answer, dict) and "queued" in answer, answer
    return AsyncResult(answer["queued"], app=client).get(timeout=RESULT_TIMEOUT)


def test_a_review_leads_to_a_second_commit_on_the_same_branch(
    pr: PullRequest, client, model, registry
) -> None:
    first = pr.tip()
    assert first == pr.result["commits"][-1]
    review = pr.stub.add_review(
        "acme",
        pr.name,
        pr.number,
        user=WRITER,
        body="@codeworker please also add sub",
        comments=[{"path": "calc.py", "line": 5, "body": "and a test for it next to test_mul"}],
    )
    [inline] = pr.stub.review_comments("acme", pr.name, pr.number)
    model.play(
        s.say(s.create("calc.py", CALC_SUB), s.create("tests/test_sub.py", SUB_TEST)), s.done("sub added")
    )

    status, answer = pr.deliver(
        "pull_request_review", pr.stub.webhooks.pull_request_review("acme", pr.name, review["id"])
    )
    _, again = pr.deliver(
        "pull_request_review_comment",
        pr.stub.webhooks.pull_request_review_comment("acme", pr.name, inline["id"]),
    )
    result = outcome(client, answer)

    assert status == 200 and again["queued"] == answer["queued"]  # one review, one revision
    assert result["status"] == "pr_open" and result["success"], result
    assert result["operation_id"] == f"{pr.operation_id}.r1" and result["branch"] == pr.branch
    assert pr.tip() == result["commits"][-1] and pr.git.parents("acme", pr.name, pr.branch) == [first]
    assert pr.git.read_file("acme", pr.name, pr.branch, "calc.py") == CALC_SUB
    # Verified over the whole pull request against the base: test_mul and test_sub both fail there.
    assert sorted(result["verification"]["reproduced"]) == [
        "tests/test_mul.py::test_mul",
        "tests/test_sub.py::test_sub",
    ]
    record = pr.record(registry)
    assert (record.status, record.revisions, record.head, record.revising) == ("pr_open", 1, pr.tip(), None)
    # The model read the review, the inline comment's place and the repository's AGENTS.md, and the
    # people's words came inside the block that says they are data.
    request = model.messages_requests[-2]
    task = request["messages"][0]["content"][0]["text"]
    assert "<untrusted-request-" in task and "please also add sub" in task
    assert "On calc.py line 5: and a test for it next to test_mul" in task
    assert "Keep every function one line long." in request["system"][0]["text"]
    # One progress comment, edited to the end; one answer saying what changed.
    comments = pr.comments()
    [progress] = [c for c in comments if c.startswith(PROGRESS_MARKER)]
    assert f"pushed `{result['commits'][-1][:12]}`, verified" in progress
    [reply] = [c for c in comments if c.startswith("**Revision 1**")]
    assert "`calc.py`" in reply and "`tests/test_sub.py`" in reply and "@alice" in reply
