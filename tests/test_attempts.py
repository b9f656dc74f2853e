"""Attempts against a real redis-server: every shared write of an attempt is conditional on it still
holding the operation's claim, checked in the same Redis step, and two attempts of one operation
never share a journal entry."""

from __future__ import annotations

import dataclasses

import pytest

from codeworker.coordination.attempts import Attempt, ClaimLost
from codeworker.coordination.claims import OperationClaims
from codeworker.coordination.keys import Keys, repo_id
from codeworker.coordination.locks import FileLocks
from codeworker.coordination.registry import BranchRecord, BranchRegistry, BranchStatus
from codeworker.worker.journal import ActiveJob, ActiveJobs
from tests.support.jobs import new_repo
from tests.support.pipeline_runs import FnExecutor, with_executor

URL = "https://github.com/acme/app.git"
REPO = repo_id(URL)
BRANCH = "codeworker/refactor/op-1"


@pytest.fixture()
def keys() -> Keys:
    return Keys(prefix="cwattempt")


@pytest.fixture()
def claims(redis_client, keys) -> OperationClaims:
    return OperationClaims(redis_client, keys, ttl=30, result_ttl=60)


def take_over(redis_client, keys: Keys, claims: OperationClaims, operation_id: str) -> Attempt:
    """A second attempt claims the operation, as it would once the first one's heartbeat lapsed."""
    redis_client.delete(keys.heartbeat(operation_id))
    claim = claims.claim(operation_id)
    assert claim.owner is not None
    return claims.attempt(operation_id, claim.owner)


def first_attempt(claims: OperationClaims, operation_id: str = "op-1") -> Attempt:
    claim = claims.claim(operation_id)
    assert claim.owner is not None
    return claims.attempt(operation_id, claim.owner)


def record(operation_id: str = "op-1") -> BranchRecord:
    return BranchRecord.new(
        repository=URL, repo=REPO, branch=BRANCH, operation_id=operation_id, operation_type="refactor"
    )


def test_a_superseded_attempt_cannot_change_the_branch_record(redis_client, keys, claims):
    registry = BranchRegistry(redis_client, keys)
    stale = first_attempt(claims)
    registry.register(record(), attempt=stale)
    live = take_over(redis_client, keys, claims, "op-1")
    registry.register(record(), attempt=live)
    registry.update(REPO, BRANCH, attempt=live, fencing_token=7)
    before = registry.get(REPO, BRANCH)

    for write in (
        lambda: registry.register(record(), attempt=stale),
        lambda: registry.update(REPO, BRANCH, attempt=stale, fencing_token=1),
        lambda: registry.transition(REPO, BRANCH, BranchStatus.FAILED, attempt=stale, error="late"),
        lambda: registry.transition(REPO, BRANCH, BranchStatus.PUSHED, attempt=stale),
    ):
        with pytest.raises(ClaimLost) as caught:
            write()
        assert "branch record" in str(caught.value)
    assert registry.get(REPO, BRANCH) == before

    assert registry.transition(REPO, BRANCH, BranchStatus.PUSHED, attempt=live).status == "pushed"
    # An operator's or the webhook's write is no attempt's: unconditional.
    assert registry.transition(REPO, BRANCH, BranchStatus.ABANDONED, error="by hand").status == "abandoned"


def test_a_finished_operation_is_no_attempts_to_write(redis_client, keys, claims):
    registry = BranchRegistry(redis_client, keys)
    attempt = first_attempt(claims)
    registry.register(record(), attempt=attempt)
    claims.finish("op-1", attempt.owner, {"success": True})
    with pytest.raises(ClaimLost):
        registry.transition(REPO, BRANCH, BranchStatus.ABANDONED, attempt=attempt)
    assert registry.get(REPO, BRANCH).status == BranchStatus.ACTIVE


def test_a_superseded_attempt_cannot_take_the_live_attempts_locks_back(redis_client, keys, claims):
    stale_attempt = first_attempt(claims)
    stale = FileLocks(redis_client, keys, REPO, "op-1", 30, attempt=stale_attempt)
    stale.acquire(["app.py"], wait=0)
    live = FileLocks(
        redis_client, keys, REPO, "op-1", 30, attempt=take_over(redis_client, keys, claims, "op-1")
    )
    live.acquire(["app.py"], wait=0)  # taken over from the earlier attempt of the same operation

    with pytest.raises(ClaimLost) as caught:
        stale.acquire(["app.py", "other.py"], wait=0)
    assert "the lock on app.py, other.py" in str(caught.value)
    assert redis_client.hget(keys.lock(REPO, "app.py"), "owner") == live.owner
    assert redis_client.exists(keys.lock(REPO, "other.py")) == 0
    stale.release()  # releases only what is still its own: nothing
    live.verify()


def entry(operation_id: str, claim_owner: str) -> ActiveJob:
    return ActiveJob(
        operation_id=operation_id,
        operation_type="refactor",
        repository=URL,
        repo=REPO,
        branch=BRANCH,
        claim_owner=claim_owner,
        lock_owner=f"{operation_id}:lock",
        started_at=0.0,
        pid=1,
    )


def test_two_attempts_of_one_operation_keep_their_own_journal_entries(tmp_path):
    journal = ActiveJobs(tmp_path / "active" / "worker")
    stale, live = entry("op-1", "host:1:aaaaaaaaaaaaaaaa"), entry("op-1", "host:2:bbbbbbbbbbbbbbbb")
    journal.write(stale)
    journal.write(live)
    assert {job.claim_owner for job in journal.all()} == {stale.claim_owner, live.claim_owner}

    journal.remove("op-1", stale.claim_owner)
    assert journal.all() == [live]


def test_an_entry_of_the_previous_release_leaves_the_journal_once_cleaned_up(tmp_path):
    journal = ActiveJobs(tmp_path / "active" / "1234")
    journal.directory.mkdir(parents=True)
    old = entry("op-1", "host:1:aaaaaaaaaaaaaaaa")
    (journal.directory / "op-1.json").write_text(old.model_dump_json())  # named by operation only
    journal.remove("op-1", "host:9:cccccccccccccccc")
    assert journal.all() == [old]
    journal.remove("op-1", old.claim_owner)
    assert journal.all() == []


class DiesOpeningThePullRequest:
    """The GitHub client of a worker that is killed right after its push (SIGKILL cannot be
    caught; ending the run with SystemExit leaves the same claim, record and remote behind)."""

    def check_run(self, *args: object, **kwargs: object) -> None:
        """The verdict's check run is published; the worker dies opening the pull request."""

    def open(self, *args: object, **kwargs: object) -> None:
        raise SystemExit("killed between the push and the pull request")


@pytest.mark.parametrize("cleaned_up", [False, True], ids=["record-pushed", "record-abandoned"])
def test_an_attempt_after_a_push_delivers_it_instead_of_pushing_again(
    pipe, git_server, github_stub, cleaned_up
):
    """``cleaned_up``: the dead attempt's record was abandoned by the cleanup after it (a shutdown
    that cancelled it, a reaped pool child, an adopted journal) before the job came back."""
    name, url = new_repo(git_server, {"app.py": "X = 1\n"})
    job = {
        "operation_id": "op-resume",
        "description": "Change X",
        "repository": {"url": url, "owner": "acme", "name": name},
        "target_files": ["app.py"],
    }
    work = FnExecutor(lambda ws: ws.write_file("app.py", "X = 2\n"))
    dying = dataclasses.replace(with_executor(pipe, work), pulls=DiesOpeningThePullRequest())
    with pytest.raises(SystemExit):
        dying.run(job, "refactor")
    pipe.redis.delete(pipe.keys.heartbeat("op-resume"))  # the worker is gone
    [pushed] = git_server.ref_updates("acme", name)
    if cleaned_up:
        [record] = pipe.registry.list(repo=repo_id(url))
        pipe.registry.transition(record.repo, record.branch, BranchStatus.ABANDONED, error="killed")

    stages: list[str] = []
    result = with_executor(pipe, work).run(job, "refactor", lambda p: stages.append(p.stage))

    assert result["status"] == "pr_open", result["error"]
    assert stages == ["checkout", "resume", "pull_request"]
    assert git_server.ref_updates("acme", name) == [pushed]
    assert result["commits"] == [pushed.new]
    assert result["files_modified"] == ["app.py"] and result["summary"] == "test change"
    assert len(github_stub.pull_requests("acme", name)) == 1
    assert list(pipe.redis.scan_iter(pipe.keys.lock_pattern())) == []
    assert pipe.claims.get("op-resume")["stalls"] == 1
    [record] = pipe.registry.list(repo=repo_id(url))
    assert record.status == BranchStatus.PR_OPEN


def test_a_push_the_remote_no_longer_holds_is_made_again(pipe, git_server, github_stub):
    name, url = new_repo(git_server, {"app.py": "X = 1\n"})
    job = {
        "operation_id": "op-moved",
        "description": "Change X",
        "repository": {"url": url, "owner": "acme", "name": name},
    }
    work = FnExecutor(lambda ws: ws.write_file("app.py", "X = 2\n"))
    dying = dataclasses.replace(with_executor(pipe, work), pulls=DiesOpeningThePullRequest())
    with pytest.raises(SystemExit):
        dying.run(job, "refactor")
    pipe.redis.delete(pipe.keys.heartbeat("op-moved"))
    [pushed] = git_server.ref_updates("acme", name)
    branch = pushed.ref.removeprefix("refs/heads/")
    moved = git_server.commit_on("acme", name, branch, {"b": "b\n"}, "by hand")

    result = with_executor(pipe, work).run(job, "refactor")

    assert result["status"] == "pr_open", result["error"]
    assert [update.old for update in git_server.ref_updates("acme", name)] == [pushed.old, moved]
