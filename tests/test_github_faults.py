"""The GitHub API failing under a job, through the GitHub stand-in and the real PyGithub client: a
5xx, a request that timed out after GitHub did the work, a primary rate limit with a short or a
long reset, a secondary rate limit, a 429 with Retry-After. A short limit is waited out inside the
job; a long one sends the job back to the queue with that countdown, its locks released, and the
next attempt opens the pull request without pushing again; no pull request is ever opened twice."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest

from codeworker.coordination.keys import Keys
from codeworker.pipeline.errors import RetryOperation
from codeworker.pipeline.service import Pipeline
from codeworker.worker import metrics
from tests.plugins.cw_scripted import ScriptedExecutor
from tests.support.jobs import new_repo, scripted_job

CHANGE = {"write": {"NOTES.md": "a note\n"}}
PULLS = r"/repos/acme/[^/]+/pulls$"


@pytest.fixture()
def quick(pipe: Pipeline) -> Iterator[Pipeline]:
    """The test pipeline with a 2 s GitHub timeout and a 5 s in-job rate-limit wait."""
    settings = pipe.settings.model_copy(update={"github_timeout": 2.0, "github_rate_limit_wait": 5.0})
    yield dataclasses.replace(
        Pipeline.from_settings(settings), resolve_executor=lambda name, operation_type: ScriptedExecutor()
    )


def errors(kind: str) -> float:
    return metrics.EXTERNAL_ERRORS.labels("github", kind)._value.get()


def opened_once(result: dict, github_stub, name: str) -> None:
    assert result["status"] == "pr_open" and result["success"], result["error"]
    [pull] = github_stub.pull_requests("acme", name)
    assert pull["number"] == result["pr"]["number"]


def test_a_5xx_is_retried_and_the_pull_request_opened_once(quick, git_server, github_stub):
    name, url = new_repo(git_server)
    github_stub.fail_next("POST", PULLS, status=502, after_processing=True)
    before = errors("server_error")

    result = quick.run(scripted_job(url, name, CHANGE), "refactor")

    opened_once(result, github_stub, name)
    assert errors("server_error") == before  # PyGithub's own retry met 422 "already exists": found


def test_a_pull_request_created_but_unanswered_is_looked_up_not_created_again(quick, git_server, github_stub):
    name, url = new_repo(git_server)
    # Every try PyGithub makes (it re-sends a POST after a read timeout) creates or finds the PR
    # and gets no answer in time.
    github_stub.delay_next("POST", PULLS, seconds=4, times=3)
    before = errors("timeout")

    result = quick.run(scripted_job(url, name, CHANGE), "refactor")

    opened_once(result, github_stub, name)
    assert errors("timeout") - before >= 1
    assert len(github_stub.requests_for("GET", PULLS)) >= 1  # looked up by head first


@pytest.mark.parametrize(
    "limit",
    [
        {"reset_in": 1},
        {"retry_after": 1},
        {"secondary": True, "retry_after": 2},
        {"status": 429, "retry_after": 1},
    ],
    ids=["primary-reset", "retry-after", "secondary", "429"],
)
def test_a_short_rate_limit_is_waited_out_in_the_job(quick, git_server, github_stub, limit):
    name, url = new_repo(git_server)
    github_stub.rate_limit_next("POST", PULLS, **limit)
    before = errors("rate_limited")

    result = quick.run(scripted_job(url, name, CHANGE), "refactor")

    opened_once(result, github_stub, name)
    assert errors("rate_limited") - before == 1


def test_a_long_rate_limit_sends_the_job_back_and_the_next_attempt_only_opens_the_pr(
    quick, git_server, github_stub
):
    name, url = new_repo(git_server)
    github_stub.rate_limit_next("POST", PULLS, reset_in=3600)
    job = scripted_job(url, name, CHANGE)

    with pytest.raises(RetryOperation) as deferred:
        quick.run(job, "refactor")

    assert 3500 <= deferred.value.retry_after <= 3602  # the reset, counted from the answer
    assert list(quick.redis.scan_iter(Keys().lock_pattern())) == []
    pushed = [u for u in git_server.ref_updates("acme", name) if u.accepted]
    assert len(pushed) == 1 and github_stub.pull_requests("acme", name) == []

    result = quick.run(job, "refactor")  # the retry, once the countdown is over

    opened_once(result, github_stub, name)
    assert [u for u in git_server.ref_updates("acme", name) if u.accepted] == pushed  # not pushed again
    assert result["commits"] == [pushed[0].new]


def test_a_pushed_result_is_completed_by_sending_the_operation_again(quick, git_server, github_stub):
    name, url = new_repo(git_server)
    github_stub.fail_next("POST", PULLS, status=502, after_processing=False, times=3)  # every try
    job = scripted_job(url, name, CHANGE)

    first = quick.run(job, "refactor")

    assert first["status"] == "pushed" and "502" in first["error"], first
    pushed = [u for u in git_server.ref_updates("acme", name) if u.accepted]
    assert len(pushed) == 1

    again = quick.run(job, "refactor")

    opened_once(again, github_stub, name)
    assert again["commits"] == first["commits"]
    assert [u for u in git_server.ref_updates("acme", name) if u.accepted] == pushed
    assert quick.run(job, "refactor") == again  # now final: a third send answers the same result
