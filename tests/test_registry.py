"""Branch registry against a real redis-server: the state machine, indexes and re-registration."""

from __future__ import annotations

import threading

import pytest

from codeworker.coordination.keys import Keys, repo_id
from codeworker.coordination.registry import (
    LIVE_STATUSES,
    TRANSITIONS,
    BranchExists,
    BranchRecord,
    BranchRegistry,
    BranchStatus,
    InvalidTransition,
    UnknownBranch,
)

URL = "https://github.com/acme/app.git"
REPO = repo_id(URL)
OTHER_URL = "https://github.com/acme/other"
OTHER = repo_id(OTHER_URL)

S = BranchStatus
PATHS_TO: dict[BranchStatus, list[BranchStatus]] = {
    S.ACTIVE: [],
    S.PUSHED: [S.PUSHED],
    S.PR_OPEN: [S.PUSHED, S.PR_OPEN],
    S.MERGING: [S.PUSHED, S.MERGING],
    S.REVISING: [S.PUSHED, S.PR_OPEN, S.REVISING],
}
"""Transitions that bring a new branch (active) to each live status, and to revising."""

VALID = {
    (S.ACTIVE, S.PUSHED),
    (S.PUSHED, S.PR_OPEN),
    (S.PUSHED, S.MERGING),
    (S.MERGING, S.MERGED),
    (S.PR_OPEN, S.MERGED),
    (S.PR_OPEN, S.CLOSED),
    (S.PR_OPEN, S.REVISING),
    (S.REVISING, S.PR_OPEN),
    (S.REVISING, S.MERGED),
    (S.REVISING, S.CLOSED),
    *((live, end) for live in LIVE_STATUSES for end in (S.FAILED, S.ABANDONED, S.CANCELLED)),
}


@pytest.fixture()
def keys() -> Keys:
    return Keys(prefix="cwtest")


@pytest.fixture()
def registry(redis_client, keys) -> BranchRegistry:
    return BranchRegistry(redis_client, keys)


def record(branch: str = "codeworker/fix-1", operation_id: str = "op-1", url: str = URL) -> BranchRecord:
    return BranchRecord(
        repository=url,
        repo=repo_id(url),
        branch=branch,
        operation_id=operation_id,
        operation_type="error_fix",
        files=["src/app.py"],
    )


def bring_to(registry: BranchRegistry, status: BranchStatus, branch: str) -> None:
    for step in PATHS_TO[status]:
        registry.transition(REPO, branch, step)


def test_state_machine_is_the_documented_one():
    assert {(source, to) for source, tos in TRANSITIONS.items() for to in tos} == VALID


def test_register_stores_an_active_record(registry, redis_client, keys):
    stored = registry.register(record().model_copy(update={"status": S.MERGED}))

    assert stored.status is S.ACTIVE
    assert stored.files == ["src/app.py"]
    assert stored.created_at > 0
    assert stored.created_at == stored.updated_at
    assert stored.pr_number is None
    assert registry.get(REPO, "codeworker/fix-1") == stored
    key = keys.branch(REPO, "codeworker/fix-1")
    assert redis_client.type(key) == "hash"
    assert redis_client.sismember(keys.branches_by_status("active"), key)
    assert redis_client.sismember(keys.branches_by_repo(REPO), key)
    assert redis_client.sismember(keys.all_branches(), key)


def test_get_unknown_is_none(registry):
    assert registry.get(REPO, "nope") is None


@pytest.mark.parametrize(("source", "to"), sorted(VALID))
def test_every_valid_transition(registry, redis_client, keys, source, to):
    registry.register(record())
    bring_to(registry, source, "codeworker/fix-1")
    before = registry.get(REPO, "codeworker/fix-1")
    assert before is not None
    assert before.status is source

    after = registry.transition(REPO, "codeworker/fix-1", to)

    assert after.status is to
    assert after.updated_at >= before.updated_at
    assert registry.get(REPO, "codeworker/fix-1") == after
    key = keys.branch(REPO, "codeworker/fix-1")
    assert [status for status in S if redis_client.sismember(keys.branches_by_status(status), key)] == [to]


INVALID = [
    (S.ACTIVE, S.ACTIVE),
    (S.ACTIVE, S.PR_OPEN),
    (S.ACTIVE, S.MERGING),
    (S.ACTIVE, S.MERGED),
    (S.ACTIVE, S.CLOSED),
    (S.PUSHED, S.PUSHED),
    (S.PUSHED, S.MERGED),
    (S.PUSHED, S.ACTIVE),
    (S.PR_OPEN, S.MERGING),
    (S.MERGING, S.CLOSED),
    (S.MERGED, S.FAILED),
    (S.MERGED, S.ABANDONED),
    (S.CLOSED, S.PR_OPEN),
    (S.FAILED, S.ACTIVE),
    (S.FAILED, S.ABANDONED),
    (S.ABANDONED, S.FAILED),
    (S.MERGED, S.CANCELLED),
    (S.CANCELLED, S.ACTIVE),
    (S.CANCELLED, S.FAILED),
]


@pytest.mark.parametrize(("source", "to"), INVALID)
def test_invalid_transitions_are_refused_and_change_nothing(registry, redis_client, keys, source, to):
    registry.register(record())
    if source in PATHS_TO:
        bring_to(registry, source, "codeworker/fix-1")
    elif source in (S.MERGED, S.CLOSED):
        bring_to(registry, S.PR_OPEN, "codeworker/fix-1")
        registry.transition(REPO, "codeworker/fix-1", source)
    else:
        registry.transition(REPO, "codeworker/fix-1", source)
    before = registry.get(REPO, "codeworker/fix-1")

    with pytest.raises(InvalidTransition) as caught:
        registry.transition(REPO, "codeworker/fix-1", to, error="nope")

    assert caught.value.from_status == source
    assert caught.value.to_status == to
    assert registry.get(REPO, "codeworker/fix-1") == before
    key = keys.branch(REPO, "codeworker/fix-1")
    assert [status for status in S if redis_client.sismember(keys.branches_by_status(status), key)] == [
        source
    ]


def test_transition_sets_fields_and_clears_none(registry):
    registry.register(record())
    pushed = registry.transition(REPO, "codeworker/fix-1", S.PUSHED, fencing_token=7)
    assert pushed.fencing_token == 7
    opened = registry.transition(
        REPO, "codeworker/fix-1", S.PR_OPEN, pr_number="12", pr_url="https://github.com/acme/app/pull/12"
    )
    assert opened.pr_number == 12
    assert opened.pr_url == "https://github.com/acme/app/pull/12"
    assert opened.fencing_token == 7
    failed = registry.transition(REPO, "codeworker/fix-1", S.FAILED, error="boom", pr_url=None)
    assert failed.error == "boom"
    assert failed.pr_url is None
    assert registry.get(REPO, "codeworker/fix-1") == failed


def test_transition_of_unknown_branch(registry):
    with pytest.raises(UnknownBranch):
        registry.transition(REPO, "nope", S.PUSHED)


def test_transition_refuses_identity_fields(registry):
    registry.register(record())
    with pytest.raises(ValueError, match="operation_id"):
        registry.transition(REPO, "codeworker/fix-1", S.PUSHED, operation_id="op-2")
    with pytest.raises(ValueError, match="status"):
        registry.update(REPO, "codeworker/fix-1", status="merged")
    assert registry.get(REPO, "codeworker/fix-1").status is S.ACTIVE


def test_racing_transitions_one_wins(registry, redis_server, keys):
    registry.register(record())
    bring_to(registry, S.PUSHED, "codeworker/fix-1")
    barrier = threading.Barrier(2)
    outcomes: dict[BranchStatus, str] = {}

    def move(to: BranchStatus) -> None:
        barrier.wait()
        try:
            registry.transition(REPO, "codeworker/fix-1", to)
            outcomes[to] = "won"
        except InvalidTransition:
            outcomes[to] = "refused"

    threads = [threading.Thread(target=move, args=(to,)) for to in (S.PR_OPEN, S.MERGING)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert sorted(outcomes.values()) == ["refused", "won"]


def test_update_changes_fields_not_status(registry):
    registry.register(record())
    updated = registry.update(REPO, "codeworker/fix-1", fencing_token=3, files=["a.py", "b.py"])
    assert updated.fencing_token == 3
    assert updated.files == ["a.py", "b.py"]
    assert updated.status is S.ACTIVE
    assert registry.get(REPO, "codeworker/fix-1") == updated
    with pytest.raises(UnknownBranch):
        registry.update(REPO, "nope", fencing_token=1)
    with pytest.raises(ValueError):
        registry.update(REPO, "codeworker/fix-1", fencing_token="not a number")


def test_list_by_repo_status_and_both(registry):
    registry.register(record("b1", "op-1"))
    registry.register(record("b2", "op-2"))
    registry.register(record("b3", "op-3", url=OTHER_URL))
    registry.transition(REPO, "b2", S.PUSHED)
    registry.transition(OTHER, "b3", S.PUSHED)

    def names(records: list[BranchRecord]) -> list[str]:
        return [r.branch for r in records]

    assert names(registry.list()) == ["b1", "b2", "b3"]
    assert names(registry.list(repo=REPO)) == ["b1", "b2"]
    assert names(registry.list(repo=OTHER)) == ["b3"]
    assert names(registry.list(status=S.PUSHED)) == ["b2", "b3"]
    assert names(registry.list(status=S.ACTIVE)) == ["b1"]
    assert names(registry.list(repo=REPO, status=S.PUSHED)) == ["b2"]
    assert names(registry.list(repo=OTHER, status=S.ACTIVE)) == []
    assert registry.list(repo="github.com/nobody/none") == []


def test_reregister_by_same_operation_resets_to_active(registry, redis_client, keys):
    first = registry.register(record())
    registry.transition(REPO, "codeworker/fix-1", S.PUSHED, fencing_token=9)

    again = registry.register(record())

    assert again.status is S.ACTIVE
    assert again.created_at == first.created_at
    assert again.fencing_token is None
    key = keys.branch(REPO, "codeworker/fix-1")
    assert not redis_client.sismember(keys.branches_by_status("pushed"), key)
    assert redis_client.sismember(keys.branches_by_status("active"), key)
    assert [r.branch for r in registry.list(status=S.ACTIVE)] == ["codeworker/fix-1"]


def test_register_by_another_operation_is_refused(registry):
    registry.register(record(operation_id="op-1"))
    with pytest.raises(BranchExists) as caught:
        registry.register(record(operation_id="op-2"))
    assert caught.value.operation_id == "op-1"
    assert caught.value.status == "active"
    assert registry.get(REPO, "codeworker/fix-1").operation_id == "op-1"


def test_new_record_is_active_and_stamped():
    fresh = BranchRecord.new(
        repository=URL, repo=REPO, branch="b", operation_id="op-1", operation_type="refactor", files=["a.py"]
    )
    assert fresh.status is S.ACTIVE
    assert fresh.created_at == fresh.updated_at > 0
