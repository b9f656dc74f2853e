"""POST /webhooks/github over real HTTP against a real Redis branch registry."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
import redis
from pydantic import SecretStr

from codeworker.config import Settings
from codeworker.coordination.keys import Keys, repo_id
from codeworker.coordination.registry import BranchRecord, BranchRegistry, BranchStatus
from codeworker.worker.health import Health
from codeworker.worker.http import HttpServer, WorkerState, create_app, signature

SECRET = "webhook-secret-for-tests"
REPOSITORY = "https://github.com/acme/inventory"


def serve(registry: BranchRegistry, secret: str) -> HttpServer:
    state = WorkerState(
        hostname="test",
        concurrency=1,
        health=lambda: Health(live=True, ready=True),
        active_jobs=list,
        registry=registry,
        started_at=time.time(),
    )
    app = create_app(Settings(webhook_secret=SecretStr(secret)), state)
    return HttpServer(app, "127.0.0.1", 0).start()


@pytest.fixture()
def registry(redis_client: redis.Redis) -> BranchRegistry:
    return BranchRegistry(redis_client, Keys())


@pytest.fixture()
def server(registry: BranchRegistry) -> Iterator[HttpServer]:
    http = serve(registry, SECRET)
    yield http
    http.stop()


def post(server: HttpServer, body: bytes, headers: dict[str, str]) -> tuple[int, dict]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{server.port}/webhooks/github",
        data=body,
        headers={"Content-Type": "application/json", **headers},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - http on loopback
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def open_pr(registry: BranchRegistry, branch: str) -> None:
    repo = repo_id(REPOSITORY)
    registry.register(
        BranchRecord.new(
            repository=REPOSITORY,
            repo=repo,
            branch=branch,
            operation_id=f"op-{branch[-4:]}",
            operation_type="test",
        )
    )
    registry.transition(repo, branch, BranchStatus.PUSHED)
    registry.transition(repo, branch, BranchStatus.PR_OPEN, pr_number=7, pr_url=f"{REPOSITORY}/pull/7")


def closed_event(branch: str, merged: bool) -> bytes:
    return json.dumps(
        {
            "action": "closed",
            "number": 7,
            "pull_request": {
                "number": 7,
                "merged": merged,
                "head": {"ref": branch, "repo": {"html_url": REPOSITORY, "clone_url": REPOSITORY + ".git"}},
                "base": {"ref": "main"},
            },
            "repository": {"html_url": REPOSITORY, "clone_url": REPOSITORY + ".git"},
        }
    ).encode()


def signed(body: bytes, event: str = "pull_request") -> dict[str, str]:
    return {"X-Hub-Signature-256": signature(SECRET, body), "X-GitHub-Event": event}


@pytest.mark.parametrize(("merged", "expected"), [(True, BranchStatus.MERGED), (False, BranchStatus.CLOSED)])
def test_a_signed_closed_pull_request_moves_the_branch(server, registry, merged, expected):
    branch = f"codeworker/test/op-{int(merged)}abc-x"
    open_pr(registry, branch)
    body = closed_event(branch, merged)

    status, answer = post(server, body, signed(body))

    assert status == 200, answer
    assert answer["status"] == expected.value
    record = registry.get(repo_id(REPOSITORY), branch)
    assert record.status == expected and record.pr_number == 7
    # GitHub redelivers webhooks: the second one changes nothing and is not an error.
    assert post(server, body, signed(body))[0] == 202
    assert registry.get(repo_id(REPOSITORY), branch).status == expected


def test_the_same_delivery_is_acted_on_once(server, registry, redis_client):
    branch = "codeworker/test/opdup1-x"
    open_pr(registry, branch)
    body = closed_event(branch, merged=False)
    headers = {**signed(body), "X-GitHub-Delivery": "72d3162e-cc78-11e3-81ab-4c9367dc0958"}

    first = post(server, body, headers)
    # Reopened meanwhile (as a test can; GitHub would send a new delivery): a copy of the first
    # delivery must not close it again.
    registry.client.hset(registry.keys.branch(repo_id(REPOSITORY), branch), "status", "pr_open")
    second = post(server, body, headers)

    assert first == (200, {"branch": branch, "repo": repo_id(REPOSITORY), "status": "closed"})
    assert second == (200, {"duplicate": headers["X-GitHub-Delivery"]})
    assert redis_client.ttl(Keys().delivery(headers["X-GitHub-Delivery"])) > 6 * 24 * 3600


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"X-GitHub-Event": "pull_request"}, 401),
        ({"X-GitHub-Event": "pull_request", "X-Hub-Signature-256": "sha256=" + "0" * 64}, 403),
        ({"X-GitHub-Event": "pull_request", "X-Hub-Signature-256": signature("another secret", b"x")}, 403),
    ],
)
def test_unsigned_or_mis_signed_is_refused_and_changes_nothing(server, registry, headers, expected):
    branch = "codeworker/test/opbad-x"
    open_pr(registry, branch)
    body = closed_event(branch, merged=True)
    before = registry.get(repo_id(REPOSITORY), branch)

    status, answer = post(server, body, headers)

    assert status == expected, answer
    assert registry.get(repo_id(REPOSITORY), branch) == before


def test_a_body_changed_after_signing_is_refused(server, registry):
    branch = "codeworker/test/optamp-x"
    open_pr(registry, branch)
    body = closed_event(branch, merged=False)
    headers = signed(closed_event(branch, merged=True))

    assert post(server, body, headers)[0] == 403
    assert registry.get(repo_id(REPOSITORY), branch).status == BranchStatus.PR_OPEN


def test_ping_unknown_branches_and_other_events(server, registry):
    ping = json.dumps({"zen": "Keep it logically awesome.", "hook_id": 1}).encode()
    assert post(server, ping, signed(ping, "ping")) == (200, {"event": "ping", "ok": True})

    unknown = closed_event("someone/else", merged=True)
    status, answer = post(server, unknown, signed(unknown))
    assert status == 202 and "not a codeworker branch" in answer["ignored"]
    assert registry.list() == []

    opened = json.dumps({"action": "opened", "pull_request": {}}).encode()
    assert post(server, opened, signed(opened))[0] == 202
    push = json.dumps({"ref": "refs/heads/main"}).encode()
    assert post(server, push, signed(push, "push"))[0] == 202


def test_without_a_secret_the_endpoint_is_off(registry):
    http = serve(registry, "")
    try:
        body = closed_event("codeworker/test/x", merged=True)
        status, answer = post(http, body, signed(body))
    finally:
        http.stop()
    assert status == 503 and answer == {"error": "webhook secret not configured"}
