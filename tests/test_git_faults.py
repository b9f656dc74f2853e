"""The git remote failing under a job: the loopback smart-HTTP server drops the connection, answers
503, cuts an answer off half way after applying a push, or never answers; a port where nothing
listens refuses the connection; a hook rejects the push. Transient failures are tried again with
backoff (CODEWORKER_GIT_RETRIES) and the job completes with one push; a rejection is not retried,
and the result names the remote's message; a remote that stays down fails the job with the error
named, nothing pushed, locked or registered as pushed."""

from __future__ import annotations

import dataclasses
import socket
from collections.abc import Iterator

import pytest

from codeworker.coordination.keys import Keys, repo_id
from codeworker.coordination.registry import BranchStatus
from codeworker.git.auth import set_timeouts
from codeworker.loopback.gitserver import Fault
from codeworker.pipeline.service import Pipeline
from codeworker.worker import metrics
from tests.plugins.cw_scripted import ScriptedExecutor
from tests.support.jobs import new_repo, scripted_job

RETRIES = 2
FETCH, PUSH = "git-upload-pack", "git-receive-pack"
CHANGE = {"write": {"NOTES.md": "a note\n"}}


@pytest.fixture()
def faulty(pipe: Pipeline) -> Iterator[Pipeline]:
    """The test pipeline with quick retries and a 2 s read timeout, running the scripted executor."""
    settings = pipe.settings.model_copy(
        update={"git_retries": RETRIES, "git_retry_delay": 0.05, "git_read_timeout_ms": 2_000}
    )
    yield dataclasses.replace(
        Pipeline.from_settings(settings), resolve_executor=lambda name, operation_type: ScriptedExecutor()
    )
    set_timeouts(pipe.settings.git_connect_timeout_ms, pipe.settings.git_read_timeout_ms)  # process-wide


def posts(git_server, name: str, service: str) -> int:
    return sum(
        r.method == "POST" and r.path.endswith(f"acme/{name}.git/{service}") for r in git_server.requests
    )


def moves(git_server, name: str) -> list[str]:
    """Refs the server moved (an update to the value a ref already had moves nothing)."""
    return [u.ref for u in git_server.ref_updates("acme", name) if u.accepted and u.old != u.new]


def errors(kind: str) -> float:
    return metrics.EXTERNAL_ERRORS.labels("git", kind)._value.get()


def assert_nothing_held(pipe: Pipeline, result: dict) -> None:
    assert list(pipe.redis.scan_iter(Keys().lock_pattern())) == []
    assert pipe.journal.all() == []


@pytest.mark.parametrize("fault", [Fault.CLOSE, Fault.STATUS_503, Fault.HANG], ids=str)
def test_a_fetch_that_fails_once_is_tried_again(faulty, git_server, fault):
    name, url = new_repo(git_server)
    git_server.fail_next("acme", name, fault, FETCH)

    result = faulty.run(scripted_job(url, name, CHANGE), "refactor")

    assert result["status"] == "pr_open" and result["success"], result["error"]
    assert posts(git_server, name, FETCH) >= 2


def test_a_remote_that_keeps_failing_fails_the_job_naming_the_error(faulty, git_server):
    name, url = new_repo(git_server)
    git_server.fail_next("acme", name, Fault.STATUS_503, FETCH, times=10)
    before = errors("server_error")

    result = faulty.run(scripted_job(url, name, CHANGE), "refactor")

    assert result["status"] == "failed" and "503" in result["error"], result
    assert f"after {RETRIES + 1} tries" in result["error"]
    assert posts(git_server, name, FETCH) == RETRIES + 1
    assert errors("server_error") - before == RETRIES + 1
    assert git_server.branches("acme", name) == ["main"]
    assert_nothing_held(faulty, result)


def test_a_push_whose_answer_was_cut_off_lands_once(faulty, git_server, github_stub):
    """The server applied the push and the answer was lost: the next try finds the branch already
    at the commit, sends nothing, and the job goes on to its one pull request."""
    name, url = new_repo(git_server)
    git_server.fail_next("acme", name, Fault.TRUNCATE, PUSH)

    result = faulty.run(scripted_job(url, name, CHANGE), "refactor")

    assert result["status"] == "pr_open" and result["success"], result["error"]
    assert moves(git_server, name) == [f"refs/heads/{result['branch']}"]
    assert git_server.ref_sha("acme", name, f"refs/heads/{result['branch']}") == result["commits"][-1]
    assert len(github_stub.pull_requests("acme", name)) == 1


def test_a_push_that_times_out_is_tried_again(faulty, git_server, github_stub):
    name, url = new_repo(git_server)
    git_server.fail_next("acme", name, Fault.HANG, PUSH)
    before = errors("timeout")

    result = faulty.run(scripted_job(url, name, CHANGE), "refactor")

    assert result["status"] == "pr_open" and result["success"], result["error"]
    assert posts(git_server, name, PUSH) == 2 and errors("timeout") - before == 1
    assert moves(git_server, name) == [f"refs/heads/{result['branch']}"]


def test_a_push_a_hook_rejects_is_not_tried_again_and_its_message_is_named(faulty, git_server, github_stub):
    name, url = new_repo(git_server)
    git_server.reject_refs("acme", name, "refs/heads/codeworker/*")

    result = faulty.run(scripted_job(url, name, CHANGE), "refactor")

    assert result["status"] == "failed" and not result["success"]
    assert "refs/heads/codeworker/" in result["error"] and "rejected" in result["error"].lower(), result
    assert posts(git_server, name, PUSH) == 1
    assert moves(git_server, name) == [] and github_stub.pull_requests("acme", name) == []
    record = faulty.registry.get(repo_id(url), result["branch"])
    assert record is not None and record.status == BranchStatus.FAILED
    assert_nothing_held(faulty, result)


def test_a_refused_connection_is_tried_again_then_named(faulty):
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # bound, never listening: connections are refused
        url = f"http://127.0.0.1:{port}/acme/gone.git"
        settings = faulty.settings.model_copy(update={"allowed_repos": [f"http://127.0.0.1:{port}/"]})
        refusing = dataclasses.replace(faulty, settings=settings)
        before = errors("connect")

        result = refusing.run(scripted_job(url, "gone", CHANGE), "refactor")

    assert result["status"] == "failed", result
    assert f"127.0.0.1:{port}" in result["error"] and f"after {RETRIES + 1} tries" in result["error"]
    assert errors("connect") - before == RETRIES + 1
    assert_nothing_held(refusing, result)
