"""The PR client against the GitHub stand-in, through the real PyGithub over real HTTP."""

from __future__ import annotations

import threading

import pytest
import requests
from pydantic import SecretStr

from codeworker.github import GitHubError, PullRequestRef, PullRequests
from codeworker.loopback.github_stub import GitHubStub
from tests.support import github_client
from tests.support.github_client import NAME, OWNER, TOKEN

# The shared fixtures, bound to this module's names: pytest finds them here for these tests only.
stub = github_client.stub
prs = github_client.prs


def open_pr(prs: PullRequests, head: str = "codeworker/fix-1", **overrides: object) -> PullRequestRef:
    args: dict[str, object] = {
        "owner": OWNER,
        "name": NAME,
        "head": head,
        "base": "main",
        "title": "Fix the widget",
        "body": "Body\n\nwith *markdown*",
        "draft": False,
        "labels": ["codeworker", "error_fix"],
    }
    args.update(overrides)
    return prs.open(**args)  # type: ignore[arg-type]


def test_open_creates_pr_with_title_body_draft_and_labels(stub: GitHubStub, prs: PullRequests) -> None:
    ref = open_pr(prs, draft=True)

    [pull] = stub.pull_requests(OWNER, NAME)
    assert ref == PullRequestRef(
        number=pull["number"], url=pull["html_url"], title="Fix the widget", draft=True
    )
    assert pull["title"] == "Fix the widget"
    assert pull["body"] == "Body\n\nwith *markdown*"
    assert pull["draft"] is True
    assert pull["head"]["label"] == f"{OWNER}:codeworker/fix-1"
    assert pull["base"]["ref"] == "main"
    assert [label["name"] for label in pull["labels"]] == ["codeworker", "error_fix"]
    [create] = stub.requests_for("POST", r"/pulls$")
    assert create.body == {
        "base": "main",
        "head": "codeworker/fix-1",
        "title": "Fix the widget",
        "body": "Body\n\nwith *markdown*",
        "draft": True,
    }
    [labels] = stub.requests_for("POST", rf"/issues/{pull['number']}/labels$")
    assert labels.body == ["codeworker", "error_fix"]


def test_open_without_labels_sends_no_label_request(stub: GitHubStub, prs: PullRequests) -> None:
    open_pr(prs, labels=[])

    assert stub.requests_for("POST", r"/labels$") == []
    assert [r.method for r in stub.requests] == ["POST"]  # lazy repository: no GET /repos first


def test_retried_create_after_lost_answer_returns_the_existing_pr(
    stub: GitHubStub, prs: PullRequests
) -> None:
    stub.fail_next("POST", rf"^/repos/{OWNER}/{NAME}/pulls$", status=502, after_processing=True)

    ref = open_pr(prs)

    # PyGithub's retry re-sent the POST; the second one met "already exists" and we looked it up.
    creates = stub.requests_for("POST", r"/pulls$")
    assert len(creates) == 2
    assert creates[0].body == creates[1].body
    [pull] = stub.pull_requests(OWNER, NAME)
    assert ref.number == pull["number"]
    assert ref.url == pull["html_url"]
    [lookup] = stub.requests_for("GET", r"/pulls$")
    assert "state=open" in lookup.path
    assert "head=acme%3Acodeworker%2Ffix-1" in lookup.path
    assert [label["name"] for label in pull["labels"]] == ["codeworker", "error_fix"]


def test_open_twice_for_the_same_head_returns_the_same_pr(stub: GitHubStub, prs: PullRequests) -> None:
    first = open_pr(prs, labels=["codeworker"])
    second = open_pr(prs, title="A second title", labels=["refactor"])

    assert second.number == first.number
    assert second.title == "Fix the widget"  # the existing PR, not the second request's title
    [pull] = stub.pull_requests(OWNER, NAME)
    assert {label["name"] for label in pull["labels"]} == {"codeworker", "refactor"}


def test_different_heads_get_different_prs(stub: GitHubStub, prs: PullRequests) -> None:
    a = open_pr(prs, head="codeworker/a")
    b = open_pr(prs, head="codeworker/b")

    assert a.number != b.number
    assert len(stub.pull_requests(OWNER, NAME)) == 2


def test_wrong_token_is_a_github_error_with_401_and_no_token(stub: GitHubStub) -> None:
    wrong = "ghp_wrongToken9876543210zyxwvutsrqponmlk"
    with (
        PullRequests(stub.url, SecretStr(wrong), seconds_between_writes=0.0) as client,
        pytest.raises(GitHubError) as caught,
    ):
        open_pr(client)

    error = caught.value
    assert error.status == 401
    assert "401" in str(error)
    assert "Bad credentials" in str(error)
    assert wrong not in str(error)
    assert wrong not in repr(error)
    assert stub.pull_requests(OWNER, NAME) == []


def test_validation_error_is_a_github_error_with_githubs_message(prs: PullRequests) -> None:
    with pytest.raises(GitHubError) as caught:
        open_pr(prs, head="main")

    assert caught.value.status == 422
    assert "Validation Failed" in str(caught.value)
    assert "No commits between main and main" in str(caught.value)


def test_persistent_5xx_is_a_github_error_after_retries(stub: GitHubStub, prs: PullRequests) -> None:
    stub.fail_next("POST", r"/pulls$", status=503, after_processing=False, times=10)

    with pytest.raises(GitHubError) as caught:
        open_pr(prs)

    assert caught.value.status == 503
    assert len(stub.requests_for("POST", r"/pulls$")) == 3  # the first try and two retries
    assert stub.pull_requests(OWNER, NAME) == []


def test_unreachable_api_is_a_github_error(stub: GitHubStub) -> None:
    url = stub.url
    stub.stop()
    with (
        PullRequests(url, SecretStr(TOKEN), seconds_between_writes=0.0, timeout=2) as client,
        pytest.raises(GitHubError) as caught,
    ):
        open_pr(client)
    assert caught.value.status is None
    assert TOKEN not in str(caught.value)


def test_configured_write_spacing_reaches_pygithub(stub: GitHubStub) -> None:
    # Not timed: the Requester is what sleeps, so check what it was built with.
    with PullRequests(stub.url, SecretStr(TOKEN), seconds_between_writes=0.0, timeout=7.5) as client:
        settings = client._github.requester.kwargs
    assert settings["seconds_between_writes"] == 0.0
    assert settings["seconds_between_requests"] is None
    assert settings["timeout"] == 8
    assert settings["retry"].total == 2


def test_token_goes_in_the_header_never_in_a_path(stub: GitHubStub, prs: PullRequests) -> None:
    stub.fail_next("POST", r"/pulls$")
    open_pr(prs)
    open_pr(prs)  # "already exists": the open pull request is looked up

    assert len(stub.requests) >= 4
    for request in stub.requests:
        assert TOKEN not in request.path
        assert request.headers["Authorization"] == f"token {TOKEN}"


def test_stub_answers_unknown_routes_and_bad_tokens_in_githubs_shape(stub: GitHubStub) -> None:
    def call(path: str, token: str) -> tuple[int, dict[str, object]]:
        response = requests.get(stub.url + path, headers={"Authorization": f"Bearer {token}"}, timeout=5)
        return response.status_code, response.json()

    status, body = call(f"/repos/{OWNER}/{NAME}", TOKEN)
    assert status == 200
    assert body["full_name"] == f"{OWNER}/{NAME}"
    assert body["default_branch"] == "main"
    assert call("/nope", TOKEN)[0] == 404
    assert call("/nope", TOKEN)[1]["message"] == "Not Found"
    assert call(f"/repos/{OWNER}/{NAME}", "wrong") == (
        401,
        {"message": "Bad credentials", "documentation_url": "https://docs.github.com/rest", "status": "401"},
    )


def test_concurrent_opens_for_one_head_agree_on_one_pr(stub: GitHubStub) -> None:
    clients = [PullRequests(stub.url, SecretStr(TOKEN), seconds_between_writes=0.0) for _ in range(4)]
    barrier = threading.Barrier(len(clients))
    refs: list[PullRequestRef] = []

    def run(client: PullRequests) -> None:
        barrier.wait()
        refs.append(open_pr(client))

    threads = [threading.Thread(target=run, args=(client,)) for client in clients]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for client in clients:
        client.close()

    assert len(refs) == len(clients)
    assert {ref.number for ref in refs} == {1}
    assert len(stub.pull_requests(OWNER, NAME)) == 1
