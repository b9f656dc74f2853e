"""Attempts against a real redis-server: every shared write of an attempt is conditional on it still
holding the operation's claim, checked in the same Redis step, and two attempts of one operation
never share a journal entry."""

from __future__ import annotations

import pytest

from codeworker.coordination.attempts import Attempt, ClaimLost
from codeworker.coordination.claims import OperationClaims
from codeworker.coordination.keys import Keys, repo_id
from codeworker.coordination.locks import FileLocks
from codeworker.coordination.registry import BranchRecord, BranchRegistry, BranchStatus
from codeworker.worker.journal import ActiveJob, ActiveJobs

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
